use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelsError {
    #[error("unknown architecture {0:?}; known: {known}", known = crate::zoo::Arch::names().join(", "))]
    UnknownArch(String),
    #[error("invalid model config: {0}")]
    InvalidConfig(String),
    #[error("cannot read model config {path}: {source}")]
    ReadConfig {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("model config {path} is not valid JSON for this version: {source}")]
    ParseConfig {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}
