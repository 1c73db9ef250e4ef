//! The rollout of a signed release: approval, one rollout per Deployment, re-verification from the
//! registry, server-side apply of the image by digest, watching the Deployment, the post-deploy
//! verdicts, and the rollback. The order of writes is what makes a restart at any instant safe:
//! finalizer on the release → claim on the Deployment (resourceVersion precondition) → status
//! with `previousImage` → image. Only the claim holder writes an image, and only over the image it
//! recorded (a rival's image is never written over); a final phase is stored before the claim is
//! given back, so a rival that then takes the claim reads this release as ended.

use jiff::Timestamp;
use k8s_openapi::{api::apps::v1::Deployment, apimachinery::pkg::apis::meta::v1::Time};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;

use super::{
    Ctx, Error, api,
    release_plan::Notice,
    release_signing,
    status_write::{StatusWriter, read_fresh},
};
use crate::{
    api::{
        FIELD_MANAGER, FIELD_TARGET_DEPLOYMENT, FINALIZER_ROLLOUT, ModelRelease,
        ModelReleaseStatus, Phase, SecurePipeline,
        conditions::{self, Health, reason},
        release::TargetMode,
        release::{ImageRef, RolloutStatus, Verdict},
    },
    metrics::OutcomeLabels,
    rollout::{self, Progress, Step, Turn},
};

mod gate_mode;

/// Where the post-deploy stages stand.
enum PostDeploy {
    /// One blocked, for this reason.
    Blocked(String),
    /// All passed (or there are none).
    Passed,
    /// Some still run.
    Pending,
}

/// One reconcile's view of the rollout.
pub struct Rollout<'a> {
    ctx: &'a Ctx,
    release: &'a ModelRelease,
    pipeline: &'a SecurePipeline,
    writer: &'a StatusWriter<ModelRelease>,
    status: &'a mut ModelReleaseStatus,
    notices: &'a mut Vec<Notice>,
    now: Timestamp,
    rescan_rollback: bool,
}

impl<'a> Rollout<'a> {
    /// Prepares to advance `status` (the planned status) of `release`.
    pub fn new(
        ctx: &'a Ctx,
        release: &'a ModelRelease,
        pipeline: &'a SecurePipeline,
        writer: &'a StatusWriter<ModelRelease>,
        status: &'a mut ModelReleaseStatus,
        notices: &'a mut Vec<Notice>,
    ) -> Self {
        let now = (ctx.now)();
        Self {
            ctx,
            release,
            pipeline,
            writer,
            status,
            notices,
            now,
            rescan_rollback: false,
        }
    }

    /// Whether a rescan that blocks this Released release restores an earlier one
    /// (`onFinding: rollback` in the pipeline as it is now).
    #[must_use]
    pub fn rescan_rollback(mut self, enabled: bool) -> Self {
        self.rescan_rollback = enabled;
        self
    }

    /// Takes the next rollout step the status calls for, if any; a deleted release undoes its
    /// rollout first, an ended one gives its claim back.
    pub async fn advance(mut self) -> Result<(), Error> {
        if self.release.spec.target.mode == TargetMode::Gate {
            return self.advance_gated().await;
        }
        if self.release.metadata.deletion_timestamp.is_some() {
            return self.on_delete().await;
        }
        let signed = self.status.phase == Phase::Signing && self.status.signature.is_some();
        match self.status.phase {
            _ if signed => self.begin().await?,
            Phase::AwaitingApproval => self.begin().await?,
            Phase::RollingOut => self.watch().await?,
            Phase::Verifying => self.verify_post_deploy().await?,
            Phase::RollingBack => self.watch_rollback().await?,
            Phase::Released if self.vulnerable_rollback_due() => {
                self.restore_after_rescan().await?
            }
            _ => {}
        }
        if self.status.phase.is_final() && self.has_finalizer() {
            self.let_go().await?;
        }
        Ok(())
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.ctx.client.clone(), &self.namespace())
    }

    fn namespace(&self) -> String {
        self.release.namespace().unwrap_or_default()
    }

    fn target(&self) -> &str {
        &self.release.spec.target.deployment
    }

    fn set(&mut self, phase: Phase, kind: Health, why: &'static str, message: String) {
        let old_phase = self.status.phase;
        let old_reason =
            conditions::get(&self.status.conditions, conditions::READY).map(|c| c.reason.clone());
        conditions::set_health(
            &mut self.status.conditions,
            kind,
            why,
            &message,
            self.release.metadata.generation,
            &Time(self.now),
        );
        self.status.phase = phase;
        let warning = kind == Health::Stalled
            || matches!(
                phase,
                Phase::Blocked | Phase::Failed | Phase::RolledBack | Phase::RollingBack
            );
        if old_phase != phase {
            self.notices.push(Notice {
                warning,
                reason: phase.as_str(),
                note: format!(
                    "phase {} -> {}: {message}",
                    old_phase.as_str(),
                    phase.as_str()
                ),
                task_run: None,
            });
        } else if old_reason.as_deref() != Some(why) && kind != Health::Progressing {
            self.notices.push(Notice {
                warning,
                reason: why,
                note: message,
                task_run: None,
            });
        }
    }

    fn rolled_out(&mut self, value: bool, why: &'static str, message: &str) {
        let generation = self.release.metadata.generation;
        conditions::set(
            &mut self.status.conditions,
            conditions::ROLLED_OUT,
            value,
            why,
            message,
            generation,
            &Time(self.now),
        );
    }

    fn count(&self, outcome: Phase, why: &'static str) {
        self.ctx
            .metrics
            .rollouts
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
                reason: why,
            })
            .inc();
    }

    /// Writes the status now, before touching the Deployment.
    async fn persist(&mut self) -> Result<(), Error> {
        let metrics = &self.ctx.metrics;
        super::phase_clock::write(self.writer, self.release, self.status, self.now, metrics).await
    }

    /// Server-side applies the container image (and release annotation) under Sluice's manager.
    async fn apply(
        &self,
        image: &str,
        release: Option<&str>,
        model: Option<&str>,
    ) -> Result<(), Error> {
        let body = rollout::image_apply(
            self.target(),
            &self.release.spec.target.container,
            image,
            release,
            model,
        );
        // force: the image field belongs to whoever created the Deployment; Sluice takes only it.
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let dep = self
            .deployments()
            .patch(self.target(), &params, &Patch::Apply(&body))
            .await
            .map_err(api("apply-deployment-image"))?;
        // On the Deployment too, so `kubectl describe deployment` tells who changed its image.
        let rollback = release != Some(self.release.name_any().as_str());
        let (reason, verb) = if rollback {
            ("SluiceRollback", "restored")
        } else {
            ("SluiceRollout", "rolled out")
        };
        let note = format!(
            "Sluice {verb} container {} to {image} (release {})",
            self.release.spec.target.container,
            self.release.name_any()
        );
        let related = kube::Resource::object_ref(self.release, &());
        Notice {
            warning: rollback,
            ..Notice::normal(reason, note)
        }
        .emit(self.ctx, &dep, "Rollout", Some(related))
        .await;
        Ok(())
    }

    /// Target checks, turn, approval and signature verification; then claim, record and apply.
    async fn begin(&mut self) -> Result<(), Error> {
        let Some(image) = self.status.image.clone() else {
            return Ok(());
        };
        let Some(dep) = self.ready_target().await? else {
            return Ok(());
        };
        // The turn comes first: a release waiting for approval can still be superseded.
        if !self.my_turn(&dep).await? {
            return Ok(());
        }
        if !self.approved_and_verified(&image).await {
            return Ok(());
        }
        self.add_finalizer().await?;
        let dep = self.take_claim(dep).await?;
        let target = format!("{}@{}", image.repository, image.digest);
        self.start(&dep, target).await
    }

    /// Manual approval of this digest, then its signatures verified; false when either is missing
    /// (the status says which).
    async fn approved_and_verified(&mut self, image: &ImageRef) -> bool {
        if let Some((why, message)) = rollout::approval_pending(self.release, &image.digest) {
            self.set(Phase::AwaitingApproval, Health::Progressing, why, message);
            return false;
        }
        self.verified(image).await
    }

    /// Verifies the image's (and model's) signature in the registry just before the rollout or
    /// admission; a failure blocks the release or stalls it (registry down) with its reason.
    async fn verified(&mut self, image: &ImageRef) -> bool {
        let Err(f) = release_signing::verify(self.ctx, self.release, self.pipeline, image).await
        else {
            return true;
        };
        let phase = if f.block {
            Phase::Blocked
        } else {
            self.status.phase
        };
        let kind = if f.block {
            Health::Ended { failed: true }
        } else {
            Health::Stalled
        };
        self.set(phase, kind, f.category, f.message);
        false
    }

    /// The target Deployment with the named container, or a Stalled condition saying why not.
    async fn ready_target(&mut self) -> Result<Option<Deployment>, Error> {
        let ns = self.namespace();
        let name = self.target().to_string();
        let phase = self.status.phase;
        // From the watch cache: a release waiting for its turn looks every few seconds, and the
        // claim is taken with this copy's resourceVersion as precondition, so a stale copy costs
        // a 409 and a retry, never a wrong claim. Only "not found" is confirmed fresh (a
        // Deployment created a moment ago may not be in the cache yet).
        let cached = self.ctx.cached_deployment(&ns, &name);
        let dep = match cached {
            Some(dep) => Some(dep),
            None => self
                .deployments()
                .get_opt(&name)
                .await
                .map_err(api("get-deployment"))?,
        };
        let Some(dep) = dep else {
            let message = format!(
                "target Deployment {name} not found in namespace {ns}; a release only rolls out to a Deployment in its own namespace"
            );
            self.set(phase, Health::Stalled, reason::TARGET_NOT_FOUND, message);
            return Ok(None);
        };
        let container = &self.release.spec.target.container;
        if rollout::container_image(&dep, container).is_none() {
            let message = format!("Deployment {name} has no container named {container}");
            self.set(phase, Health::Stalled, reason::CONTAINER_NOT_FOUND, message);
            return Ok(None);
        }
        Ok(Some(dep))
    }

    async fn my_turn(&mut self, dep: &Deployment) -> Result<bool, Error> {
        // Decided on the cache first: a Wait seen there at worst waits for the holder's final
        // phase to arrive (its arrival wakes this release), and a Superseded is true (a release
        // seen Released was released). A Go is confirmed on the Deployment itself: a holder that
        // was released records itself there in the patch that gives the claim back
        // (`rollout::ANNOTATION_RELEASED`), and the claim is taken against this very copy's
        // resourceVersion, so a newer release that a lagging cache hides is either seen here or
        // makes the claim fail (409) and the turn is decided again. No list of releases. A claim
        // already held needs no confirmation.
        let target = self.target().to_string();
        let cached = self
            .ctx
            .releases(&self.namespace(), |r| r.spec.target.deployment == target)
            .await?;
        let mut turn = rollout::turn(self.release, dep, &cached);
        if turn == Turn::Go
            && !rollout::holds_claim(dep, self.release)
            && let Some(newer) = rollout::newer_released(dep, self.release)
        {
            turn = Turn::Superseded(newer);
        }
        let target = self.target().to_string();
        match turn {
            Turn::Go => Ok(true),
            Turn::Wait(other) => {
                let phase = self.status.phase;
                let message =
                    format!("waiting: ModelRelease {other} is rolling out to Deployment {target}");
                self.set(
                    phase,
                    Health::Progressing,
                    reason::WAITING_FOR_ROLLOUT,
                    message,
                );
                Ok(false)
            }
            Turn::Superseded(newer) => {
                let message = format!(
                    "superseded: the newer ModelRelease {newer} of Deployment {target} was released before this one started its rollout"
                );
                self.set(
                    Phase::Superseded,
                    Health::Ended { failed: false },
                    reason::SUPERSEDED,
                    message,
                );
                Ok(false)
            }
        }
    }

    fn has_finalizer(&self) -> bool {
        self.release
            .finalizers()
            .iter()
            .any(|f| f == FINALIZER_ROLLOUT)
    }

    /// Adds the finalizer before the Deployment is touched, so a deletion from then on first
    /// undoes the rollout. The copy in the cache may lag behind the API server: when the
    /// precondition fails, the release is read fresh and the finalizer added to that.
    async fn add_finalizer(&self) -> Result<(), Error> {
        if self.has_finalizer() {
            return Ok(());
        }
        self.patch_finalizers(
            |r| {
                let present = r.finalizers().iter().any(|f| f == FINALIZER_ROLLOUT);
                (!present).then(|| finalizer_ops(r))
            },
            "add-finalizer",
        )
        .await
    }

    /// Drops the finalizer; like `add_finalizer`, from a fresh read when the cache lags.
    async fn remove_finalizer(&self) -> Result<(), Error> {
        self.patch_finalizers(unfinalize_ops, "remove-finalizer")
            .await
    }

    /// Applies the JSON patch `ops_for` builds (None: nothing to do) to the cached release; when
    /// its precondition fails because the cache lags, reads the release fresh and tries once more.
    async fn patch_finalizers(
        &self,
        ops_for: impl Fn(&ModelRelease) -> Option<serde_json::Value>,
        action: &'static str,
    ) -> Result<(), Error> {
        let Some(ops) = ops_for(self.release) else {
            return Ok(());
        };
        match self.patch_release_json(ops, action).await {
            Err(Error::Stale(_)) => {}
            Ok(Some(written)) => {
                self.writer.advanced(&written);
                return Ok(());
            }
            other => return other.map(|_| ()),
        }
        let fresh = read_fresh(&self.ctx.client, self.release).await?;
        // Not recorded as this reconcile's version: its status was computed from the stale copy,
        // so its next status write fails and the reconcile runs again on a fresh read.
        match fresh.as_ref().and_then(ops_for) {
            Some(ops) => self.patch_release_json(ops, action).await.map(|_| ()),
            None => Ok(()),
        }
    }

    /// The releases of this release's Deployment, read fresh (not from the cache): a holder
    /// stores its final phase before it gives the claim back, and only a fresh list is sure to
    /// show it. Narrowed by the CRD's selectable field `spec.target.deployment`, so that 2,000
    /// releases of one namespace cost a few objects per turn, not 2,000; an API server without
    /// selectable fields (before 1.31) refuses the selector, and the whole namespace is read.
    async fn fresh_releases(&self) -> Result<Vec<ModelRelease>, Error> {
        let releases = Api::<ModelRelease>::namespaced(self.ctx.client.clone(), &self.namespace());
        let selector = format!("{FIELD_TARGET_DEPLOYMENT}={}", self.target());
        match releases
            .list(&ListParams::default().fields(&selector))
            .await
        {
            Ok(list) => Ok(list.items),
            Err(kube::Error::Api(s)) if s.code == 400 => releases
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .map_err(api("list-releases")),
            Err(e) => Err(api("list-releases")(e)),
        }
    }

    async fn patch_release_json(
        &self,
        ops: serde_json::Value,
        action: &'static str,
    ) -> Result<Option<ModelRelease>, Error> {
        let patch: json_patch::Patch = serde_json::from_value(ops).map_err(|e| {
            Error::Panicked(format!("{action}: building the JSON patch failed: {e}"))
        })?;
        let result = Api::<ModelRelease>::namespaced(self.ctx.client.clone(), &self.namespace())
            .patch(
                &self.release.name_any(),
                &PatchParams::default(),
                &Patch::Json::<()>(patch),
            )
            .await;
        match result {
            Ok(written) => Ok(Some(written)),
            // A failed `test` (a stale copy of the release): retry on a fresh one.
            Err(kube::Error::Api(s)) if s.code == 422 => Err(Error::Stale(action)),
            // The release is gone: nothing holds it any more.
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(api(action)(e)),
        }
    }

    /// Takes the Deployment's rollout claim (a no-op when held), valid only against the version
    /// of the Deployment read for the turn: a 409 means someone wrote it since, and the next
    /// reconcile decides again.
    async fn take_claim(&self, dep: Deployment) -> Result<Deployment, Error> {
        if rollout::holds_claim(&dep, self.release) {
            return Ok(dep);
        }
        let rv = dep.resource_version().unwrap_or_default();
        let value = rollout::claim_value(self.release);
        let patch = rollout::claim_patch(&rv, Some(&value), None);
        self.deployments()
            .patch(self.target(), &merge_params(), &Patch::Merge(&patch))
            .await
            .map_err(api("claim-deployment"))
    }

    /// Gives the claim back (when held) and drops the finalizer: the release has ended.
    async fn let_go(&mut self) -> Result<(), Error> {
        // The final phase first, so a rival that takes the claim reads this release as ended.
        self.persist().await?;
        let dep = self
            .deployments()
            .get_opt(self.target())
            .await
            .map_err(api("get-deployment"))?;
        if let Some(dep) = dep.filter(|d| rollout::holds_claim(d, self.release)) {
            let rv = dep.resource_version().unwrap_or_default();
            // Recorded for the releases still waiting: see `my_turn`.
            let released = (self.status.phase == Phase::Released
                && rollout::newer_released(&dep, self.release).is_none())
            .then(|| rollout::released_marker(self.release));
            let patch = rollout::claim_patch(&rv, None, released.as_deref());
            self.deployments()
                .patch(self.target(), &merge_params(), &Patch::Merge(&patch))
                .await
                .map_err(api("release-claim"))?;
        }
        self.remove_finalizer().await
    }

    /// A deleted release: undo a rollout still in flight (restore the previous image and follow
    /// it to the end), then let go.
    async fn on_delete(&mut self) -> Result<(), Error> {
        if !self.has_finalizer() {
            return Ok(());
        }
        let live = matches!(self.status.phase, Phase::RollingOut | Phase::Verifying);
        if self.status.phase == Phase::RollingBack {
            self.watch_rollback().await?;
        } else if live {
            let Some(rollout) = self.status.rollout.clone() else {
                return self.let_go().await;
            };
            let dep = self
                .deployments()
                .get_opt(&rollout.deployment)
                .await
                .map_err(api("get-deployment"))?;
            let ours = dep.as_ref().is_some_and(|d| {
                rollout::holds_claim(d, self.release)
                    && rollout::container_image(d, &self.release.spec.target.container).as_deref()
                        == Some(rollout.image.as_str())
            });
            if ours {
                let why = format!(
                    "ModelRelease {} was deleted during its rollout",
                    self.release.name_any()
                );
                return self.begin_rollback(why, reason::DELETED).await;
            }
            // The image never landed (or is not ours): nothing to undo.
            self.end_without_undo(
                reason::DELETED,
                "the release was deleted before its image was applied".into(),
            );
        }
        if self.status.phase.is_final() || !live {
            return self.let_go().await;
        }
        Ok(())
    }

    /// Whether the Deployment has been unhealthy for longer than the pipeline's grace: one
    /// observation of an unready pod is not a verdict (a probe can flap), a sustained one is.
    /// Records when it started, or clears that once the Deployment recovers.
    fn unhealthy_too_long(&mut self, dep: &Deployment, rollout: &RolloutStatus) -> bool {
        let mut tracked = rollout.clone();
        let Some(why) = rollout::unhealthy(dep) else {
            tracked.unhealthy_since = None;
            self.status.rollout = Some(tracked);
            return false;
        };
        let since = rollout
            .unhealthy_since
            .as_deref()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .unwrap_or(self.now);
        let grace = self.pipeline.spec.unhealthy_grace_seconds();
        if rollout::past_deadline(Some(since), self.now, grace) {
            return true;
        }
        tracked.unhealthy_since = Some(since.to_string());
        self.status.rollout = Some(tracked);
        let message = format!("{why}; rolling back unless it recovers within {grace}s of {since}");
        self.set(
            Phase::Verifying,
            Health::Progressing,
            reason::UNHEALTHY,
            message,
        );
        false
    }

    fn vulnerable_rollback_due(&self) -> bool {
        self.rescan_rollback && conditions::is_true(&self.status.conditions, conditions::VULNERABLE)
    }

    /// `onFinding: rollback`: restores the newest earlier release whose own latest rescan passes,
    /// through the same path as any rollback (turn and claim, signature re-verified, image
    /// written only over this release's own, the restore followed to the end, events, metrics).
    async fn restore_after_rescan(&mut self) -> Result<(), Error> {
        let Some(rollout) = self.status.rollout.clone() else {
            return Ok(());
        };
        let all = self.fresh_releases().await?;
        let vulnerable = conditions::get(&self.status.conditions, conditions::VULNERABLE)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        let Some(to) = super::rescan::last_passing(self.release, &all) else {
            let note = format!(
                "{vulnerable}; onFinding: rollback found no earlier release whose latest rescan passes, so this one keeps running"
            );
            self.notice_once(reason::VULNERABLE, note);
            return Ok(());
        };
        let (Some(to_image), Some(to_signed)) = (
            to.status
                .as_ref()
                .and_then(|s| s.rollout.as_ref())
                .map(|r| r.image.clone()),
            to.status.as_ref().and_then(|s| s.image.clone()),
        ) else {
            return Ok(());
        };
        let Some(dep) = self.ready_target().await? else {
            return Ok(());
        };
        match rollout::turn(self.release, &dep, &all) {
            Turn::Go => {}
            // A rival rolls out (or was released): it replaces this image anyway.
            Turn::Wait(_) | Turn::Superseded(_) => return Ok(()),
        }
        let container = self.release.spec.target.container.clone();
        if rollout::container_image(&dep, &container).as_deref() != Some(rollout.image.as_str()) {
            return Ok(());
        }
        if let Err(f) = release_signing::verify(self.ctx, to, self.pipeline, &to_signed).await {
            let note = format!(
                "{vulnerable}; onFinding: rollback did not restore {}: its signature does not verify ({})",
                to.name_any(),
                f.message
            );
            self.notice_once(reason::VULNERABLE, note);
            return Ok(());
        }
        self.add_finalizer().await?;
        let dep = self.take_claim(dep).await?;
        let why = format!(
            "{vulnerable}; onFinding: rollback restored {} ({to_image})",
            to.name_any()
        );
        let mut restore = rollout.clone();
        restore.previous_release = Some(to.name_any());
        restore.previous_model = to
            .status
            .as_ref()
            .and_then(|s| s.rollout.as_ref())
            .and_then(|r| r.model.clone());
        restore.rollback_reason = Some(why.clone());
        restore.rollback_started_at = Some(self.now.to_string());
        restore.rollback_cause = Some(reason::VULNERABLE.to_string());
        self.status.rollout = Some(restore);
        self.status.previous_image = Some(to_image.clone());
        self.rolled_out(false, reason::VULNERABLE, &why);
        self.set(
            Phase::RollingBack,
            Health::Progressing,
            reason::ROLLING_BACK,
            why,
        );
        self.persist().await?;
        if rollout::holds_claim(&dep, self.release) {
            let model = to
                .status
                .as_ref()
                .and_then(|s| s.rollout.as_ref())
                .and_then(|r| r.model.clone());
            self.apply(&to_image, Some(&to.name_any()), model.as_deref())
                .await?;
        }
        Ok(())
    }

    /// An Event with `reason`, once per distinct note (kept in the Ready message's stead).
    fn notice_once(&mut self, why: &'static str, note: String) {
        let seen = conditions::get(&self.status.conditions, conditions::VULNERABLE)
            .is_some_and(|c| c.message == note);
        if !seen {
            self.notices.push(Notice {
                warning: true,
                reason: why,
                note: note.clone(),
                task_run: None,
            });
            let generation = self.release.metadata.generation;
            conditions::set(
                &mut self.status.conditions,
                conditions::VULNERABLE,
                true,
                why,
                &note,
                generation,
                &Time(self.now),
            );
        }
    }

    fn end_without_undo(&mut self, why: &'static str, message: String) {
        self.rolled_out(false, why, &message);
        self.set(Phase::Failed, Health::Ended { failed: true }, why, message);
        self.count(Phase::Failed, why);
    }

    async fn start(&mut self, dep: &Deployment, target: String) -> Result<(), Error> {
        let container = &self.release.spec.target.container;
        let current = rollout::container_image(dep, container).unwrap_or_default();
        let model = self
            .release
            .spec
            .model
            .as_ref()
            .and_then(|m| m.artifact.as_ref())
            .map(|a| a.reference());
        let services = self.ctx.services(&self.namespace()).await?;
        let (previous, unpinned) = match release_signing::pin(
            self.ctx,
            self.release,
            self.pipeline,
            &current,
        )
        .await
        {
            Ok(pinned) => (pinned, String::new()),
            Err(why) => (
                current.clone(),
                format!(
                    "; the previous image could not be pinned to a digest ({why}), a rollback restores its tag"
                ),
            ),
        };
        self.status.previous_image = Some(previous.clone());
        self.status.rollout = Some(RolloutStatus {
            deployment: self.target().to_string(),
            image: target.clone(),
            previous_release: rollout::template_release(dep),
            target_url: rollout::service_url(dep, &services),
            started_at: self.now.to_string(),
            model: model.clone(),
            previous_model: rollout::container_model(dep, container),
            ..RolloutStatus::default()
        });
        let message = format!(
            "rolling out {target} to Deployment {} (previous image {previous}){unpinned}",
            self.target()
        );
        self.rolled_out(false, reason::ROLLING_OUT, &message);
        self.set(
            Phase::RollingOut,
            Health::Progressing,
            reason::ROLLING_OUT,
            message,
        );
        self.persist().await?;
        self.apply(&target, Some(&self.release.name_any()), model.as_deref())
            .await
    }

    /// Follows the Deployment until the new image is available everywhere, or a deadline passes.
    async fn watch(&mut self) -> Result<(), Error> {
        let (Some(rollout), Some(previous)) = (
            self.status.rollout.clone(),
            self.status.previous_image.clone(),
        ) else {
            return Ok(());
        };
        let Some(dep) = self
            .current_target(&rollout, &previous, &rollout.image)
            .await?
        else {
            return Ok(());
        };
        let container = self.release.spec.target.container.clone();
        match rollout::step(&dep, self.release, &container, &previous, &rollout.image) {
            // Status was written but the apply did not land (a restart in between).
            Step::Apply => {
                self.apply(
                    &rollout.image,
                    Some(&self.release.name_any()),
                    rollout.model.as_deref(),
                )
                .await
            }
            Step::NotClaimed => {
                self.claim_lost(&dep, &rollout);
                Ok(())
            }
            Step::Replaced(found) => {
                let message = format!(
                    "the image of container {container} of Deployment {} was changed to {found} by someone else during the rollout; Sluice does not write over it",
                    rollout.deployment
                );
                self.end_without_undo(reason::IMAGE_REPLACED, message);
                Ok(())
            }
            Step::Follow(_) => self.follow(&dep, &rollout).await,
        }
    }

    async fn follow(&mut self, dep: &Deployment, rollout: &RolloutStatus) -> Result<(), Error> {
        let since = rollout.started_at.parse().ok();
        let deadline = self.pipeline.spec.rollout_deadline_seconds();
        match rollout::progress(dep, since, self.now) {
            Progress::Complete => {
                self.rolled_out_complete(rollout);
                Ok(())
            }
            Progress::Failed(m) => self.begin_rollback(m, reason::ROLLOUT_FAILED).await,
            Progress::InProgress(m) if rollout::past_deadline(since, self.now, deadline) => {
                let why = format!(
                    "rollout of {} not complete after Sluice's deadline of {deadline}s ({m})",
                    rollout.image
                );
                self.begin_rollback(why, reason::ROLLOUT_DEADLINE_EXCEEDED)
                    .await
            }
            Progress::InProgress(m) => {
                let message = format!("rolling out {}: {m}", rollout.image);
                self.set(
                    Phase::RollingOut,
                    Health::Progressing,
                    reason::ROLLING_OUT,
                    message,
                );
                Ok(())
            }
        }
    }

    /// The claim is gone: if the image never landed, start over from the turn; if it did, the
    /// release cannot vouch for the Deployment any more and fails without writing.
    fn claim_lost(&mut self, dep: &Deployment, rollout: &RolloutStatus) {
        let container = &self.release.spec.target.container;
        let live =
            rollout::container_image(dep, container).as_deref() == Some(rollout.image.as_str());
        let holder = rollout::claim_of(dep).map_or_else(|| "nobody".to_string(), |c| c.release);
        if live {
            let message = format!(
                "the rollout claim on Deployment {} was removed or taken (now held by {holder}) while {} rolled out",
                rollout.deployment, rollout.image
            );
            self.end_without_undo(reason::CLAIM_LOST, message);
        } else {
            self.status.rollout = None;
            self.status.previous_image = None;
            let message = format!(
                "the rollout claim on Deployment {} is held by {holder}; waiting for a new turn",
                rollout.deployment
            );
            self.set(
                Phase::Signing,
                Health::Progressing,
                reason::WAITING_FOR_ROLLOUT,
                message,
            );
        }
    }

    /// The Deployment being moved from image `from` to `to`, or Failed when it vanished. The
    /// watch cache's copy serves while it only says "wait" or "done and healthy" (a rollout
    /// reconciles a dozen times while its pods come up); anything the reconcile would act on —
    /// write the image, roll back, end the release — is decided on a fresh read.
    async fn current_target(
        &mut self,
        rollout: &RolloutStatus,
        from: &str,
        to: &str,
    ) -> Result<Option<Deployment>, Error> {
        let cached = self
            .ctx
            .cached_deployment(&self.namespace(), &rollout.deployment);
        if let Some(dep) = cached.filter(|d| self.cache_suffices(d, rollout, from, to)) {
            return Ok(Some(dep));
        }
        let dep = self
            .deployments()
            .get_opt(&rollout.deployment)
            .await
            .map_err(api("get-deployment"))?;
        if dep.is_none() {
            let message = format!(
                "Deployment {} was deleted during the rollout",
                rollout.deployment
            );
            self.end_without_undo(reason::ROLLOUT_FAILED, message);
        }
        Ok(dep)
    }

    /// Whether the cached `dep` only tells this reconcile to wait, or that the move to `to` is
    /// complete with every replica healthy (see `current_target`).
    fn cache_suffices(
        &self,
        dep: &Deployment,
        rollout: &RolloutStatus,
        from: &str,
        to: &str,
    ) -> bool {
        let container = &self.release.spec.target.container;
        if !matches!(
            rollout::step(dep, self.release, container, from, to),
            Step::Follow(_)
        ) {
            return false;
        }
        // No `since`: any progress-deadline condition counts, and then a fresh read decides.
        match rollout::progress(dep, None, self.now) {
            Progress::Complete => rollout::unhealthy(dep).is_none(),
            Progress::InProgress(_) => {
                let since = rollout.started_at.parse().ok();
                let deadline = self.pipeline.spec.rollout_deadline_seconds();
                self.status.phase == Phase::RollingOut
                    && !rollout::past_deadline(since, self.now, deadline)
            }
            Progress::Failed(_) => false,
        }
    }

    fn post_deploy_stages(&self) -> Vec<String> {
        self.pipeline
            .spec
            .stages
            .iter()
            .filter(|s| s.is_post_deploy())
            .map(|s| s.name.clone())
            .collect()
    }

    fn rolled_out_complete(&mut self, rollout: &RolloutStatus) {
        let mut done = rollout.clone();
        done.completed_at = Some(self.now.to_string());
        self.status.rollout = Some(done);
        let message = format!(
            "Deployment {} runs {} on every replica",
            rollout.deployment, rollout.image
        );
        self.rolled_out(true, reason::ROLLED_OUT, &message);
        let post = self.post_deploy_stages();
        if post.is_empty() {
            self.released();
        } else {
            let message = format!("{message}; running post-deploy stages: {}", post.join(", "));
            self.set(
                Phase::Verifying,
                Health::Progressing,
                reason::VERIFYING,
                message,
            );
        }
    }

    fn released(&mut self) {
        let image = self
            .status
            .rollout
            .as_ref()
            .map(|r| r.image.clone())
            .unwrap_or_default();
        let gates = self.status.gates_summary.clone().unwrap_or_default();
        let message = format!(
            "released {image} to Deployment {}; gates passed {gates}",
            self.target()
        );
        self.set(Phase::Released, Health::Ready, reason::RELEASED, message);
        self.count(Phase::Released, reason::RELEASED);
    }

    /// Watches the Deployment's health and reads the post-deploy verdicts the planner recorded.
    async fn verify_post_deploy(&mut self) -> Result<(), Error> {
        if let Some(rollout) = self.status.rollout.clone() {
            let previous = self.status.previous_image.clone().unwrap_or_default();
            let Some(dep) = self
                .current_target(&rollout, &previous, &rollout.image)
                .await?
            else {
                return Ok(());
            };
            let container = self.release.spec.target.container.clone();
            match rollout::step(&dep, self.release, &container, &previous, &rollout.image) {
                Step::Follow(_) => {
                    if self.unhealthy_too_long(&dep, &rollout) {
                        let why = rollout::unhealthy(&dep).unwrap_or_default();
                        return self.begin_rollback(why, reason::UNHEALTHY).await;
                    }
                }
                Step::NotClaimed | Step::Apply => {
                    self.claim_lost(&dep, &rollout);
                    return Ok(());
                }
                Step::Replaced(found) => {
                    let message = format!(
                        "the image of container {container} of Deployment {} was changed to {found} by someone else while the release was verified",
                        rollout.deployment
                    );
                    self.end_without_undo(reason::IMAGE_REPLACED, message);
                    return Ok(());
                }
            }
        }
        match self.post_deploy_verdict() {
            PostDeploy::Blocked(why) => {
                let why = format!("post-deploy gate blocked: {why}");
                self.begin_rollback(why, reason::GATE_BLOCKED).await
            }
            PostDeploy::Passed => {
                self.released();
                Ok(())
            }
            PostDeploy::Pending => Ok(()),
        }
    }

    /// The verdicts the planner recorded for the post-deploy stages.
    fn post_deploy_verdict(&self) -> PostDeploy {
        let post = self.post_deploy_stages();
        let entries: Vec<_> = self
            .status
            .stages
            .iter()
            .filter(|e| post.contains(&e.name))
            .collect();
        if let Some(blocked) = entries.iter().find(|e| e.gate == Some(Verdict::Blocked)) {
            let why = blocked.reason.clone();
            return PostDeploy::Blocked(why.unwrap_or_else(|| blocked.name.clone()));
        }
        if entries.iter().all(|e| e.gate == Some(Verdict::Passed)) {
            PostDeploy::Passed
        } else {
            PostDeploy::Pending
        }
    }

    /// Restores `previousImage` the same way the release was applied.
    async fn begin_rollback(&mut self, why: String, cause: &'static str) -> Result<(), Error> {
        self.rolled_out(false, cause, &why);
        let Some(previous) = self.status.previous_image.clone() else {
            self.set(
                Phase::Failed,
                Health::Ended { failed: true },
                reason::ROLLBACK_FAILED,
                format!("{why}; no previous image is recorded to restore"),
            );
            self.count(Phase::Failed, reason::ROLLBACK_FAILED);
            return Ok(());
        };
        let mut rollout = self.status.rollout.clone().unwrap_or_default();
        rollout.rollback_reason = Some(why.clone());
        rollout.rollback_started_at = Some(self.now.to_string());
        let previous_release = rollout.previous_release.clone();
        let previous_model = rollout.previous_model.clone();
        self.status.rollout = Some(rollout);
        let message = format!("{why}; restoring {previous}");
        self.set(
            Phase::RollingBack,
            Health::Progressing,
            reason::ROLLING_BACK,
            message,
        );
        self.persist().await?;
        self.apply(
            &previous,
            previous_release.as_deref(),
            previous_model.as_deref(),
        )
        .await
    }

    async fn watch_rollback(&mut self) -> Result<(), Error> {
        let (Some(rollout), Some(previous)) = (
            self.status.rollout.clone(),
            self.status.previous_image.clone(),
        ) else {
            return Ok(());
        };
        let Some(dep) = self
            .current_target(&rollout, &rollout.image, &previous)
            .await?
        else {
            return Ok(());
        };
        let container = self.release.spec.target.container.clone();
        match rollout::step(&dep, self.release, &container, &rollout.image, &previous) {
            Step::Apply => {
                return self
                    .apply(
                        &previous,
                        rollout.previous_release.as_deref(),
                        rollout.previous_model.as_deref(),
                    )
                    .await;
            }
            Step::Follow(_) => {}
            Step::NotClaimed | Step::Replaced(_) => {
                let message = format!(
                    "could not restore {previous}: Deployment {} no longer runs this release's image or its claim was taken; Sluice does not write over another image",
                    rollout.deployment
                );
                self.end_without_undo(reason::ROLLBACK_FAILED, message);
                return Ok(());
            }
        }
        let why = rollout.rollback_reason.clone().unwrap_or_default();
        let since = rollout
            .rollback_started_at
            .as_deref()
            .and_then(|t| t.parse().ok());
        let deadline = self.pipeline.spec.rollout_deadline_seconds();
        // The Deployment's own progress deadline is not the judge of a restore: the image ran
        // before, and old pods still terminating can trip a short deadline. Sluice's is.
        let progress = match rollout::progress(&dep, since, self.now) {
            Progress::InProgress(m) | Progress::Failed(m)
                if rollout::past_deadline(since, self.now, deadline) =>
            {
                Progress::Failed(format!(
                    "not complete after Sluice's deadline of {deadline}s ({m})"
                ))
            }
            Progress::Failed(m) => Progress::InProgress(m),
            p => p,
        };
        match progress {
            Progress::InProgress(m) => {
                let message = format!("{why}; restoring {previous}: {m}");
                self.set(
                    Phase::RollingBack,
                    Health::Progressing,
                    reason::ROLLING_BACK,
                    message,
                );
            }
            Progress::Complete => {
                let message = format!(
                    "rolled back: {why}; Deployment {} runs {previous} again",
                    rollout.deployment
                );
                let cause = match rollout.rollback_cause.as_deref() {
                    Some(reason::VULNERABLE) => reason::VULNERABLE,
                    _ => reason::ROLLED_BACK,
                };
                self.set(
                    Phase::RolledBack,
                    Health::Ended { failed: true },
                    cause,
                    message,
                );
                self.count(Phase::RolledBack, cause);
            }
            Progress::Failed(m) => {
                let message = format!("{why}; restoring {previous} failed too: {m}");
                self.set(
                    Phase::Failed,
                    Health::Ended { failed: true },
                    reason::ROLLBACK_FAILED,
                    message,
                );
                self.count(Phase::Failed, reason::ROLLBACK_FAILED);
            }
        }
        Ok(())
    }
}

/// A JSON patch adding Sluice's finalizer to `release`, valid only against its resourceVersion.
fn finalizer_ops(release: &ModelRelease) -> serde_json::Value {
    let rv = release.resource_version().unwrap_or_default();
    if release.finalizers().is_empty() {
        json!([{"op": "test", "path": "/metadata/resourceVersion", "value": rv},
               {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER_ROLLOUT]}])
    } else {
        json!([{"op": "test", "path": "/metadata/resourceVersion", "value": rv},
               {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER_ROLLOUT}])
    }
}

/// A JSON patch removing Sluice's finalizer from `release`, if it has it.
fn unfinalize_ops(release: &ModelRelease) -> Option<serde_json::Value> {
    let i = release
        .finalizers()
        .iter()
        .position(|f| f == FINALIZER_ROLLOUT)?;
    let path = format!("/metadata/finalizers/{i}");
    Some(
        json!([{"op": "test", "path": path, "value": FINALIZER_ROLLOUT},
                {"op": "remove", "path": path}]),
    )
}

/// Parameters of Sluice's merge patches: its field manager, so `managedFields` says who wrote.
fn merge_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}
