//! The recorder's settings, taken from the config once at start.

use crate::config::Config;
use crate::formats::tokens::Encoding;
use crate::model::pricing::PriceBook;

/// The recorder's settings, taken from the config.
#[derive(Clone)]
pub struct RecorderSettings {
    pub capture_bodies: bool,
    /// Stored bodies are cut to this size (a decompressed body can exceed its capture).
    pub max_capture_bytes: usize,
    pub pricing: PriceBook,
    /// Encoding for token estimates of models outside OpenAI's families.
    pub default_encoding: Encoding,
    /// Spans older than this many days are deleted (0 keeps everything).
    pub retention_days: u32,
    /// `[cluster] instance`: written on every span recorded here.
    pub instance: Option<String>,
}

impl RecorderSettings {
    pub fn from_config(config: &Config) -> Self {
        RecorderSettings {
            capture_bodies: config.storage.capture_bodies,
            max_capture_bytes: config.storage.max_capture_bytes,
            pricing: config.pricing.clone(),
            default_encoding: config.default_encoding,
            retention_days: config.storage.retention_days,
            instance: config.cluster.as_ref().map(|c| c.instance.clone()),
        }
    }
}
