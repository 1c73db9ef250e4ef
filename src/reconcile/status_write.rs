//! The one way a reconcile writes an object's status: a merge patch of the whole status that
//! carries the resourceVersion the status was computed from. A reconcile that started from a
//! cached copy the API server has moved past (a watch that lags after an API-server restart)
//! writes nothing: the 409 becomes `Error::Stale` and the reconcile runs again on a fresh read,
//! so a stale cache can never record a release's own image as its `previousImage` or repeat a
//! step it already took.

use std::sync::Mutex;

use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;

use super::{Error, api};

/// Status writes of one object during one reconcile, each guarded by the version it read.
pub struct StatusWriter<K> {
    api: Api<K>,
    name: String,
    version: Mutex<Option<String>>,
}

impl<K> StatusWriter<K>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    /// A writer for `obj` as this reconcile read it.
    pub fn new(client: Client, obj: &K) -> Self {
        let ns = obj.namespace().unwrap_or_default();
        Self {
            api: Api::namespaced(client, &ns),
            name: obj.name_any(),
            version: Mutex::new(obj.resource_version()),
        }
    }

    /// Writes `status` if the object is still at the version this reconcile read or last
    /// wrote; `Error::Stale` when it is not.
    pub async fn write(&self, status: &impl Serialize) -> Result<(), Error> {
        let mut patch = json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
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
            Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::Stale("patch-status")),
            Err(e) => Err(api("patch-status")(e)),
        }
    }

    /// Records the version a write of this reconcile produced on the version it read (a
    /// finalizer patch), so the next status write expects it.
    pub fn advanced(&self, written: &K) {
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

/// `obj` as the API server has it now (None: it is gone): the rare read that bypasses the cache,
/// for the writes that must not start from a lagging copy.
pub async fn read_fresh<K>(client: &Client, obj: &K) -> Result<Option<K>, Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), &obj.namespace().unwrap_or_default())
        .get_opt(&obj.name_any())
        .await
        .map_err(api("get-fresh"))
}

#[cfg(test)]
mod tests {
    use http::{Method, StatusCode};
    use serde_json::json;

    use super::*;
    use crate::{
        api::{ModelRelease, ModelReleaseStatus},
        fixtures,
        reconcile::Context,
    };

    const STATUS_PATH: &str =
        "/apis/sluice.dev/v1alpha1/namespaces/evip/modelreleases/predictor-42/status";

    #[tokio::test]
    async fn every_write_expects_the_version_read_or_last_written_and_a_conflict_is_stale() {
        let (ctx, mut server) = Context::test();
        let mut release = fixtures::release();
        release.metadata.resource_version = Some("10".into());
        let writer = StatusWriter::<ModelRelease>::new(ctx.client.clone(), &release);
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
            matches!(second, Err(Error::Stale("patch-status"))),
            "{second:?}"
        );
    }
}
