//! The one way a reconcile writes a ModelRelease's status: a merge patch of the whole status that
//! carries the resourceVersion the status was computed from. A reconcile that started from a
//! cached copy the API server has moved past (a watch that lags after an API-server restart)
//! writes nothing: the 409 becomes `Error::Stale` and the reconcile runs again on a fresh read,
//! so a stale cache can never record a release's own image as its `previousImage` or repeat a
//! step it already took.

use std::sync::Mutex;

use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

use super::{Error, api};
use crate::api::{ModelRelease, ModelReleaseStatus};

/// Status writes of one release during one reconcile, each guarded by the version it read.
pub struct StatusWriter {
    api: Api<ModelRelease>,
    name: String,
    version: Mutex<Option<String>>,
}

impl StatusWriter {
    /// A writer for `release` as this reconcile read it.
    pub fn new(client: Client, release: &ModelRelease) -> Self {
        let ns = release.namespace().unwrap_or_default();
        Self {
            api: Api::namespaced(client, &ns),
            name: release.name_any(),
            version: Mutex::new(release.resource_version()),
        }
    }

    /// Writes `status` if the release is still at the version this reconcile read or last
    /// wrote; `Error::Stale` when it is not.
    pub async fn write(&self, status: &ModelReleaseStatus) -> Result<(), Error> {
        let mut patch = json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "ModelRelease",
            "status": status,
        });
        if let Some(version) = self.current() {
            patch["metadata"] = json!({"resourceVersion": version});
        }
        match self
            .api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(written) => {
                self.advanced(&written);
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::Stale("patch-release-status")),
            Err(e) => Err(api("patch-release-status")(e)),
        }
    }

    /// Records the version a write of this reconcile produced on the version it read (a
    /// finalizer patch), so the next status write expects it.
    pub fn advanced(&self, written: &ModelRelease) {
        *self
            .version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = written.resource_version();
    }

    fn current(&self) -> Option<String> {
        self.version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, StatusCode};
    use serde_json::json;

    use super::*;
    use crate::{fixtures, reconcile::Context};

    const STATUS_PATH: &str =
        "/apis/sluice.dev/v1alpha1/namespaces/evip/modelreleases/predictor-42/status";

    #[tokio::test]
    async fn every_write_expects_the_version_read_or_last_written_and_a_conflict_is_stale() {
        let (ctx, mut server) = Context::test();
        let mut release = fixtures::release();
        release.metadata.resource_version = Some("10".into());
        let writer = StatusWriter::new(ctx.client.clone(), &release);
        let status = ModelReleaseStatus::default();
        let client = tokio::spawn(async move {
            let first = writer.write(&status).await;
            let second = writer.write(&status).await;
            (first, second)
        });
        let r = server.expect(Method::PATCH, STATUS_PATH).await;
        assert_eq!(r.body["metadata"]["resourceVersion"], "10");
        let mut written = serde_json::to_value(&release).expect("json");
        written["metadata"]["resourceVersion"] = json!("11");
        r.ok(&written);
        let r = server.expect(Method::PATCH, STATUS_PATH).await;
        assert_eq!(r.body["metadata"]["resourceVersion"], "11");
        let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "Conflict", "code": 409, "message": "the object has been modified"});
        r.respond(StatusCode::CONFLICT, &conflict);
        let (first, second) = client.await.expect("joined");
        assert!(first.is_ok(), "{first:?}");
        assert!(
            matches!(second, Err(Error::Stale("patch-release-status"))),
            "{second:?}"
        );
    }
}
