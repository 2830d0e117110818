//! The model store as the server's model source: `impl Models for hoist_store::Store`.

use hoist_store::{ModelEntry, ModelFormat, PullStatus, Store, StoreError};
use serde_json::json;

use crate::error::chain;
use crate::models::{
    details_from_checkpoint, human_count, ModelDetails, ModelRecord, Models, ModelsError,
    PullProgress,
};

impl From<StoreError> for ModelsError {
    fn from(e: StoreError) -> ModelsError {
        match e {
            StoreError::NotFound { name } => ModelsError::NotFound { name },
            StoreError::Invalid { .. }
            | StoreError::Exists { .. }
            | StoreError::ReadOnly { .. } => ModelsError::Invalid { message: chain(&e) },
            _ => ModelsError::Other { message: chain(&e) },
        }
    }
}

fn record(e: ModelEntry) -> ModelRecord {
    ModelRecord {
        name: e.name,
        path: e.path,
        size_bytes: e.size_bytes,
        modified: e.modified,
        digest: e.digest,
        format: match e.format {
            ModelFormat::Gguf => "gguf".into(),
            ModelFormat::Safetensors => "safetensors".into(),
        },
    }
}

impl Models for Store {
    fn list(&self) -> Result<Vec<ModelRecord>, ModelsError> {
        Ok(Store::list(self)?.into_iter().map(record).collect())
    }

    fn resolve(&self, name: &str) -> Result<ModelRecord, ModelsError> {
        Ok(record(Store::resolve(self, name)?))
    }

    fn remove(&self, name: &str) -> Result<(), ModelsError> {
        Ok(Store::remove(self, name)?)
    }

    fn copy(&self, src: &str, dst: &str) -> Result<(), ModelsError> {
        Ok(Store::copy(self, src, dst)?)
    }

    fn pull(
        &self,
        name: &str,
        progress: &mut dyn FnMut(&PullProgress),
    ) -> Result<ModelRecord, ModelsError> {
        let mut report = |s: &PullStatus| {
            progress(&PullProgress {
                status: s.status.clone(),
                digest: s.digest.clone(),
                total: s.total,
                completed: s.completed,
            })
        };
        Ok(record(Store::pull(self, name, &mut report)?))
    }

    fn describe(&self, r: &ModelRecord) -> Result<ModelDetails, ModelsError> {
        let entry = Store::resolve(self, &r.name)?;
        let d = hoist_store::describe(&entry)?;
        // The model's shape, where hoist can read its configuration; the store's findings
        // (parameters counted from the tensors, their types) either way.
        let mut details = details_from_checkpoint(&r.path).unwrap_or_default();
        details.format = r.format.clone();
        if details.family.is_empty() {
            details.family = d.architecture.clone().unwrap_or_default();
        }
        details.parameter_size = human_count(d.parameters);
        details.quantization_level = d.dtypes.first().map(|(t, _)| t.clone()).unwrap_or_default();
        details.template = d.chat_template.unwrap_or_default();
        details.license = d.license.unwrap_or_default();
        let info = &mut details.model_info;
        info.insert("general.parameter_count".into(), json!(d.parameters));
        info.entry("general.architecture")
            .or_insert_with(|| json!(d.architecture));
        if let Some(c) = d.context_length {
            info.insert("general.context_length".into(), json!(c));
        }
        Ok(details)
    }
}
