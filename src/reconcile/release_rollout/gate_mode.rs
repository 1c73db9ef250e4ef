//! `spec.target.mode: gate`: Sluice judges, signs and verifies, then admits the digest instead of
//! writing it. The Deployment is never written (no claim, no finalizer, no image, no rollback):
//! its owner (Git through Flux or Argo CD) sets the image, and the enforcement webhook holds every
//! new pod of the Deployment until its digest is one a release admitted
//! (`crate::enforcement::admission`). With post-deploy stages, the release waits for the
//! Deployment to run the digest, then runs them; a failure withdraws the admission (the release
//! ends Failed) instead of rolling back.

use super::{PostDeploy, Rollout};
use crate::{
    api::{
        Phase,
        conditions::{Health, reason},
        release::RolloutStatus,
    },
    rollout::{self, Progress},
};

impl Rollout<'_> {
    /// The gate-mode counterpart of `advance`.
    pub(super) async fn advance_gated(mut self) -> Result<(), super::Error> {
        if self.release.metadata.deletion_timestamp.is_some() {
            // Nothing of the Deployment's is Sluice's to undo.
            return Ok(());
        }
        let signed = self.status.phase == Phase::Signing && self.status.signature.is_some();
        match self.status.phase {
            _ if signed => self.admit().await,
            Phase::AwaitingApproval => self.admit().await,
            Phase::RollingOut => self.await_deployment().await,
            Phase::Verifying => {
                self.judge_gated_post_deploy();
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Approval, then the signatures verified from the registry; then the digest is admitted.
    async fn admit(&mut self) -> Result<(), super::Error> {
        let Some(image) = self.status.image.clone() else {
            return Ok(());
        };
        let Some(dep) = self.ready_target().await? else {
            return Ok(());
        };
        if !self.approved_and_verified(&image).await {
            return Ok(());
        }
        let target = format!("{}@{}", image.repository, image.digest);
        let services = self.ctx.services(&self.namespace()).await?;
        self.status.rollout = Some(RolloutStatus {
            deployment: self.target().to_string(),
            image: target.clone(),
            target_url: rollout::service_url(&dep, &services),
            started_at: self.now.to_string(),
            model: self
                .release
                .spec
                .model
                .as_ref()
                .and_then(|m| m.artifact.as_ref())
                .map(|a| a.reference()),
            ..RolloutStatus::default()
        });
        let post = self.post_deploy_stages();
        let admitted = format!(
            "signature of {target} verified: new pods of Deployment {} running it are admitted (gate mode: the Deployment's owner sets its image, Sluice never writes it)",
            self.target()
        );
        if post.is_empty() {
            let gates = self.status.gates_summary.clone().unwrap_or_default();
            let message = format!("{admitted}; gates passed {gates}");
            self.set(Phase::Released, Health::Ready, reason::ADMITTED, message);
            self.count(Phase::Released, reason::ADMITTED);
        } else {
            let message = format!(
                "{admitted}; waiting for the Deployment to run it before the post-deploy stages: {}",
                post.join(", ")
            );
            self.wait_for_deployment(message);
        }
        Ok(())
    }

    /// Waits, without a deadline (Git applies when it applies), for the Deployment to run the
    /// admitted digest on every replica; then the post-deploy stages run.
    async fn await_deployment(&mut self) -> Result<(), super::Error> {
        let Some(admitted) = self.status.rollout.clone() else {
            return Ok(());
        };
        let Some(dep) = self.ready_target().await? else {
            return Ok(());
        };
        let container = &self.release.spec.target.container;
        let running = rollout::container_image(&dep, container).unwrap_or_default();
        let same = rollout::pinned_image(&running)
            .is_some_and(|r| rollout::pinned_image(&admitted.image) == Some(r));
        let complete = matches!(rollout::progress(&dep, None, self.now), Progress::Complete);
        if same && complete && rollout::unhealthy(&dep).is_none() {
            self.rolled_out_complete(&admitted);
            return Ok(());
        }
        let message = format!(
            "admitted {}; waiting for Deployment {} to run it (it runs {running}{})",
            admitted.image,
            self.target(),
            if same { ", rollout in progress" } else { "" }
        );
        self.wait_for_deployment(message);
        Ok(())
    }

    /// The post-deploy verdicts: a block withdraws the admission (new pods of the digest are
    /// held again) and ends the release Failed; restoring the previous image is Git's move.
    fn judge_gated_post_deploy(&mut self) {
        match self.post_deploy_verdict() {
            PostDeploy::Blocked(why) => {
                let image = self
                    .status
                    .rollout
                    .as_ref()
                    .map(|r| r.image.clone())
                    .unwrap_or_default();
                let message = format!(
                    "post-deploy gate blocked: {why}; the admission of {image} is withdrawn (new pods of Deployment {} running it are held); gate mode never writes the Deployment: restore its previous image in Git",
                    self.target()
                );
                self.end_without_undo(reason::GATE_BLOCKED, message);
            }
            PostDeploy::Passed => self.released(),
            PostDeploy::Pending => {}
        }
    }

    fn wait_for_deployment(&mut self, message: String) {
        self.set(
            Phase::RollingOut,
            Health::Progressing,
            reason::WAITING_FOR_DEPLOYMENT,
            message,
        );
    }
}
