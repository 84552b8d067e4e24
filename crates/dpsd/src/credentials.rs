//! Credentials `dpsd` generates on first start and keeps in the data directory: the ID scope
//! and the owner policy, whose connection string is the file users copy.

use std::path::Path;

use dps_types::{IdScope, SymmetricKey};

use crate::pki::write_secret;
use crate::DpsdError;

/// The name of the generated policy with every right, as in DPS.
pub const OWNER_POLICY: &str = "provisioningserviceowner";

/// The owner policy and its connection string.
pub struct Owner {
    /// The policy.
    pub policy: dps_api::SharedAccessPolicy,
    /// `HostName=...;SharedAccessKeyName=...;SharedAccessKey=...`.
    pub connection_string: String,
}

/// The ID scope: `<data>/id-scope` if present, else the configured one or a new one, which
/// is then written there. A configured scope that differs from the file wins and is written.
pub fn id_scope(data: &Path, configured: Option<&IdScope>) -> Result<IdScope, DpsdError> {
    let path = data.join("id-scope");
    let existing = match std::fs::read_to_string(&path) {
        Ok(text) => Some(
            IdScope::parse(text.trim()).map_err(|e| DpsdError::Credentials {
                path: path.clone(),
                why: e.to_string(),
            })?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(DpsdError::io(&path, e)),
    };
    let scope = configured
        .cloned()
        .or(existing.clone())
        .unwrap_or_else(IdScope::generate);
    if existing.as_ref() != Some(&scope) {
        std::fs::write(&path, format!("{scope}\n")).map_err(|e| DpsdError::io(&path, e))?;
    }
    Ok(scope)
}

/// The owner policy: its key is read back from `<data>/service-connection-string`, or
/// generated and written there. The file is rewritten when the host name changes.
pub fn owner_policy(data: &Path, host_name: &str) -> Result<Owner, DpsdError> {
    let path = data.join("service-connection-string");
    let key = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let key = text
                .trim()
                .split(';')
                .find_map(|part| part.strip_prefix("SharedAccessKey="))
                .ok_or_else(|| DpsdError::Credentials {
                    path: path.clone(),
                    why: "no SharedAccessKey".into(),
                })?;
            SymmetricKey::parse(key).map_err(|e| DpsdError::Credentials {
                path: path.clone(),
                why: e.to_string(),
            })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => SymmetricKey::generate(),
        Err(e) => return Err(DpsdError::io(&path, e)),
    };
    let connection_string = format!(
        "HostName={host_name};SharedAccessKeyName={OWNER_POLICY};SharedAccessKey={}",
        key.expose_base64()
    );
    if std::fs::read_to_string(&path)
        .ok()
        .as_deref()
        .map(str::trim)
        != Some(connection_string.as_str())
    {
        write_secret(&path, &format!("{connection_string}\n"))?;
    }
    Ok(Owner {
        policy: dps_api::SharedAccessPolicy {
            name: OWNER_POLICY.to_owned(),
            primary_key: key,
            secondary_key: None,
            rights: dps_api::Rights::ALL,
        },
        connection_string,
    })
}
