-- Argo CD health check for sluice.dev/SecurePipeline
-- (argocd-cm: resource.customizations.health.sluice.dev_SecurePipeline).
local hs = {status = "Progressing", message = "Waiting for Sluice to validate the pipeline"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for Sluice to observe the latest spec"
  return hs
end
local conditions = {}
for _, c in ipairs(obj.status.conditions) do
  conditions[c.type] = c
end
local ready, stalled, vulnerable = conditions["Ready"], conditions["Stalled"], conditions["Vulnerable"]
if vulnerable ~= nil and vulnerable.status == "True" then
  hs.status = "Degraded"
  hs.message = vulnerable.message
elseif stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = stalled.message
elseif ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message
end
return hs
