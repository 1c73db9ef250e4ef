//! The CustomResourceDefinitions, rendered as YAML.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;

use sluice::api::{ModelRelease, SecurePipeline};

/// Every CRD Sluice owns, in a stable order.
pub fn all() -> [CustomResourceDefinition; 2] {
    [SecurePipeline::crd(), ModelRelease::crd()]
}

/// (file name, YAML) of each CRD, in a stable order.
pub fn rendered() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    all()
        .iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let mut value = serde_json::to_value(crd)
                .map_err(<serde_yaml::Error as serde::ser::Error>::custom)?;
            drop_unsigned_formats(&mut value);
            Ok((format!("{name}.yaml"), serde_yaml::to_string(&value)?))
        })
        .collect()
}

/// schemars marks unsigned integers with formats the API server does not know (uint32 and the
/// like) and warns on every apply; `minimum: 0` already says what they mean.
fn drop_unsigned_formats(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map
                .get("format")
                .and_then(Value::as_str)
                .is_some_and(|f| f.starts_with("uint"))
            {
                map.remove("format");
            }
            map.values_mut().for_each(drop_unsigned_formats);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_unsigned_formats),
        _ => {}
    }
}
