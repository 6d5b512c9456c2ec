//! Configuration of the native push senders: Apple's APNs ([`ApnsConfig`])
//! and Google's FCM HTTP v1 ([`FcmConfig`]), and the one error their
//! constructors return ([`NativeSetupError`]).
//!
//! Both deserialize from TOML tables (`[apns]`, `[fcm]`); unknown keys are
//! refused.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Apple's production APNs endpoint.
pub const APNS_PRODUCTION: &str = "https://api.push.apple.com";
/// Apple's sandbox (development builds) APNs endpoint.
pub const APNS_SANDBOX: &str = "https://api.sandbox.push.apple.com";
/// Google's FCM endpoint.
pub const FCM_ENDPOINT: &str = "https://fcm.googleapis.com";
/// How long one push (connecting, the token fetch and the request) may take
/// by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The APNs sender's settings (token-based authentication).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    /// The signing key Apple issued (`AuthKey_<key id>.p8`: a PKCS#8 P-256
    /// key in PEM).
    pub key_file: PathBuf,
    /// The key's id (10 characters, from the developer account).
    pub key_id: String,
    /// The developer team id (10 characters).
    pub team_id: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// APNs' base URL: [`APNS_PRODUCTION`] (the default) or
    /// [`APNS_SANDBOX`] for development builds of the app.
    #[serde(default = "apns_endpoint")]
    pub endpoint: String,
    /// **Tests only**: one more trusted root certificate (PEM) besides the
    /// public web roots, for a local stand-in of the service. Leave unset.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// The FCM sender's settings (HTTP v1 API with a service account).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    /// The service account's JSON key file from the Firebase console (it
    /// holds `project_id`, `client_email`, `private_key`, `token_uri`).
    pub service_account_file: PathBuf,
    /// FCM's base URL ([`FCM_ENDPOINT`] by default).
    #[serde(default = "fcm_endpoint")]
    pub endpoint: String,
    /// **Tests only**: one more trusted root certificate (PEM) besides the
    /// public web roots, for a local stand-in of the service (and of the
    /// token endpoint). Leave unset.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl ApnsConfig {
    /// Settings for the production endpoint, no extra root.
    pub fn new(
        key_file: impl Into<PathBuf>,
        key_id: impl Into<String>,
        team_id: impl Into<String>,
        topic: impl Into<String>,
    ) -> Self {
        Self {
            key_file: key_file.into(),
            key_id: key_id.into(),
            team_id: team_id.into(),
            topic: topic.into(),
            endpoint: apns_endpoint(),
            ca_file: None,
        }
    }
}

impl FcmConfig {
    /// Settings for Google's endpoint, no extra root.
    pub fn new(service_account_file: impl Into<PathBuf>) -> Self {
        Self {
            service_account_file: service_account_file.into(),
            endpoint: fcm_endpoint(),
            ca_file: None,
        }
    }
}

fn apns_endpoint() -> String {
    APNS_PRODUCTION.to_owned()
}

fn fcm_endpoint() -> String {
    FCM_ENDPOINT.to_owned()
}

/// Why a native sender could not be made from its configuration.
#[derive(thiserror::Error, Debug)]
pub enum NativeSetupError {
    /// A file named in the configuration could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The signing key is not usable.
    #[error("{path}: {reason}")]
    Key {
        /// The key's file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The FCM service account file is not a usable service account.
    #[error("{path}: not a service account key: {reason}")]
    ServiceAccount {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another setting is not usable (an endpoint that is not an https URL,
    /// an empty key id, an extra root that is not a certificate).
    #[error("{0}")]
    Invalid(String),
}
