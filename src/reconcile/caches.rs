//! The watch caches both controllers read instead of the API server: one shared watch per kind
//! (ModelReleases, SecurePipelines, Sluice's TaskRuns, Deployments, Services), fed to the
//! controllers as triggers and read by the reconcilers. Without caches (unit tests against a
//! mocked API) every read goes to the API server, so the same code runs either way.
//!
//! What is still read fresh, and why, is said where it happens: a rollout's decision to act
//! (write the image, roll back, give the claim back) reads the Deployment fresh; every claim and
//! status write carries the resourceVersion it was computed from, and a stale write re-reads; a
//! rescan's rollback lists the Deployment's releases fresh; Secrets are never cached (the chart's
//! RBAC may get, never list them).

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
use kube::{
    Api, ResourceExt,
    api::ListParams,
    runtime::reflector::{ObjectRef, Store},
};

use super::{Context, Error, api};
use crate::{
    api::{LABEL_RELEASE, ModelRelease, SecurePipeline},
    tekton::TaskRun,
};

/// A kind a watch cache can hold (what kube's watcher and reflector ask of it).
pub trait Watched:
    kube::Resource<DynamicType: Eq + std::hash::Hash + Clone + Default>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: kube::Resource<DynamicType: Eq + std::hash::Hash + Clone + Default>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// Readers of the shared watch caches.
#[derive(Clone)]
pub struct Caches {
    /// Every ModelRelease.
    pub releases: Store<ModelRelease>,
    /// Every SecurePipeline.
    pub pipelines: Store<SecurePipeline>,
    /// TaskRuns labelled `sluice.dev/pipeline` (the stages and rescans Sluice created).
    pub task_runs: Store<TaskRun>,
    /// Every Deployment (read while a rollout only waits; see `release_rollout::current_target`).
    pub deployments: Store<Deployment>,
    /// Every Service (the one in front of a Deployment gives post-deploy stages TARGET_URL).
    pub services: Store<Service>,
    /// One per watch (the Deployments' too): true once its first full list is in.
    pub listed: Vec<tokio::sync::watch::Receiver<bool>>,
}

impl Caches {
    /// Waits until every cache has its first full list: a reconcile that read a cache still
    /// empty after a restart would see none of its TaskRuns.
    pub async fn ready(&self) {
        for listed in &self.listed {
            // A closed channel means the operator is shutting down; the reconcile then finds
            // whatever the cache holds and its writes still carry preconditions.
            let _ = listed.clone().wait_for(|done| *done).await;
        }
    }
}

fn in_namespace<K: ResourceExt>(obj: &K, ns: &str) -> bool {
    obj.namespace().as_deref() == Some(ns)
}

impl Context {
    /// The SecurePipeline `name` of namespace `ns`.
    pub async fn pipeline(&self, ns: &str, name: &str) -> Result<Option<SecurePipeline>, Error> {
        match &self.caches {
            Some(c) => Ok(c
                .pipelines
                .get(&ObjectRef::new(name).within(ns))
                .map(|p| (*p).clone())),
            None => Api::<SecurePipeline>::namespaced(self.client.clone(), ns)
                .get_opt(name)
                .await
                .map_err(api("get-pipeline")),
        }
    }

    /// The cached copy of Deployment `name` in `ns` (None without caches or when not cached).
    pub fn cached_deployment(&self, ns: &str, name: &str) -> Option<Deployment> {
        let c = self.caches.as_ref()?;
        c.deployments
            .get(&ObjectRef::new(name).within(ns))
            .map(|d| (*d).clone())
    }

    /// The Services of namespace `ns`.
    pub async fn services(&self, ns: &str) -> Result<Vec<Service>, Error> {
        match &self.caches {
            Some(c) => Ok(c
                .services
                .state()
                .into_iter()
                .filter(|s| in_namespace(&**s, ns))
                .map(|s| (*s).clone())
                .collect()),
            None => Api::<Service>::namespaced(self.client.clone(), ns)
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .map_err(api("list-services")),
        }
    }

    /// The ModelReleases of namespace `ns` that `wanted` keeps. Filtered before they are copied
    /// out of the cache: a namespace may hold thousands, a reconcile needs a few.
    pub async fn releases(
        &self,
        ns: &str,
        wanted: impl Fn(&ModelRelease) -> bool,
    ) -> Result<Vec<ModelRelease>, Error> {
        match &self.caches {
            Some(c) => Ok(c
                .releases
                .state()
                .into_iter()
                .filter(|r| in_namespace(&**r, ns) && wanted(r))
                .map(|r| (*r).clone())
                .collect()),
            None => Api::<ModelRelease>::namespaced(self.client.clone(), ns)
                .list(&ListParams::default())
                .await
                .map(|l| l.items.into_iter().filter(|r| wanted(r)).collect())
                .map_err(api("list-releases")),
        }
    }

    /// The TaskRuns of namespace `ns` whose label `key` has `value`.
    pub async fn task_runs(&self, ns: &str, key: &str, value: &str) -> Result<Vec<TaskRun>, Error> {
        match &self.caches {
            Some(c) => Ok(c
                .task_runs
                .state()
                .into_iter()
                .filter(|t| in_namespace(&**t, ns))
                .filter(|t| t.labels().get(key).map(String::as_str) == Some(value))
                .map(|t| (*t).clone())
                .collect()),
            None => Api::<TaskRun>::namespaced(self.client.clone(), ns)
                .list(&ListParams::default().labels(&format!("{key}={value}")))
                .await
                .map(|l| l.items)
                .map_err(api("list-taskruns")),
        }
    }

    /// The stage TaskRuns of release `name` in `ns`.
    pub async fn release_task_runs(&self, ns: &str, name: &str) -> Result<Vec<TaskRun>, Error> {
        self.task_runs(ns, LABEL_RELEASE, name).await
    }
}
