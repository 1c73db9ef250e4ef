-- Argo CD health check for sluice.dev/ModelRelease
-- (argocd-cm: resource.customizations.health.sluice.dev_ModelRelease).
local hs = {status = "Progressing", message = "Waiting for Sluice to report status"}
if obj.status == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for Sluice to observe the latest spec"
  return hs
end
local conditions = {}
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    conditions[c.type] = c
  end
end
local phase = obj.status.phase or "Pending"
local ready = conditions["Ready"]
hs.message = phase
if ready ~= nil and ready.message ~= nil and ready.message ~= "" then
  hs.message = phase .. ": " .. ready.message
end
local vulnerable = conditions["Vulnerable"]
if vulnerable ~= nil and vulnerable.status == "True" then
  hs.status = "Degraded"
  hs.message = "Vulnerable: " .. (vulnerable.message or "")
elseif phase == "Released" or phase == "Superseded" then
  hs.status = "Healthy"
elseif phase == "Blocked" or phase == "Failed" or phase == "RolledBack" then
  hs.status = "Degraded"
elseif phase == "AwaitingApproval" then
  -- Like a paused Argo Rollout: waiting for a person (`sluice approve`).
  hs.status = "Suspended"
elseif conditions["Stalled"] ~= nil and conditions["Stalled"].status == "True" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
return hs
