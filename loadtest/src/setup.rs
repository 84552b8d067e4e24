//! Before and after the devices: the credentials dpsd wrote to its data directory, and the
//! service API calls (create the enrollment groups, symmetric-key and X.509; delete their
//! registration records and the groups).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::future::Future;

use dps_attest::{derive_device_key, SasToken};
use dps_types::{EnrollmentGroupId, SymmetricKey};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use tokio::task::JoinSet;

use crate::target::ApiEndpoint;
use crate::LoadError;

/// The service API version the tool speaks.
const API_VERSION: &str = "2021-10-01";
/// Largest data file read: they are a line or a certificate, well under this.
const MAX_DATA_FILE: u64 = 64 * 1024;
/// Registration states asked for per query page (dpsd's maximum).
const PAGE_SIZE: usize = 1000;
/// Most query pages read in one cleanup pass: 10 million records, far beyond a run.
const MAX_PAGES: usize = 10_000;
/// Cleanup passes: a registration that was still running when the run ended can be written
/// after a pass has listed the group, so a pass that found records is followed by another.
const MAX_PASSES: usize = 3;
/// Requests in flight during setup and cleanup (DELETEs, bulk operations): enough to keep
/// dpsd's group commit busy without crowding its API listener.
const API_CONCURRENCY: usize = 32;
/// Enrollments per bulk operation: DPS's limit.
const BULK_ITEMS: usize = 10;
/// Response body quoted in an error.
const MAX_QUOTED_BODY: usize = 300;
/// Lifetime of the service SAS token of each request.
const SAS_LIFETIME_SECS: i64 = 3600;

/// What dpsd wrote on first start.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// `<data>/id-scope`.
    pub id_scope: String,
    /// `<data>/pki/ca.pem`.
    pub ca_pem: Vec<u8>,
    host: String,
    policy: String,
    key: SymmetricKey,
}

impl Credentials {
    /// Reads `service-connection-string`, `id-scope` and `pki/ca.pem` from `data_dir`.
    pub fn load(data_dir: &Path) -> Result<Self, LoadError> {
        let cs_path = data_dir.join("service-connection-string");
        let connection = text(&cs_path)?;
        let damaged = |why: &str| LoadError::DataFile {
            path: cs_path.clone(),
            why: why.to_owned(),
        };
        let field = |name: &str| {
            connection
                .split(';')
                .find_map(|p| p.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
                .map(str::to_owned)
                .ok_or_else(|| damaged(&format!("no {name}")))
        };
        let host = field("HostName")?;
        let policy = field("SharedAccessKeyName")?;
        let key = SymmetricKey::parse(&field("SharedAccessKey")?)
            .map_err(|e| damaged(&format!("SharedAccessKey: {e}")))?;
        let scope_path = data_dir.join("id-scope");
        let id_scope = text(&scope_path)?;
        if id_scope.is_empty() || !id_scope.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(LoadError::DataFile {
                path: scope_path,
                why: "not an ID scope".into(),
            });
        }
        let ca_pem = bytes(&data_dir.join("pki").join("ca.pem"))?;
        Ok(Self {
            id_scope,
            ca_pem,
            host,
            policy,
            key,
        })
    }
}

fn bytes(path: &Path) -> Result<Vec<u8>, LoadError> {
    let read = |source| LoadError::Read {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_DATA_FILE {
        return Err(LoadError::DataFile {
            path: path.to_owned(),
            why: format!("{len} bytes is over the {MAX_DATA_FILE}-byte limit"),
        });
    }
    std::fs::read(path).map_err(read)
}

fn text(path: &Path) -> Result<String, LoadError> {
    let bytes = bytes(path)?;
    String::from_utf8(bytes)
        .map(|s| s.trim().to_owned())
        .map_err(|_| LoadError::DataFile {
            path: path.to_owned(),
            why: "not UTF-8".into(),
        })
}

/// A client of the service API that signs each request with the owner policy.
#[derive(Clone)]
pub struct ServiceClient {
    http: reqwest::Client,
    base: String,
    host: String,
    policy: String,
    key: SymmetricKey,
}

impl ServiceClient {
    /// Trusts only `ca.pem`, talks only to `api` (no proxy, no redirect, a name is pinned to
    /// the loopback address), each request limited to `timeout`.
    pub fn new(
        credentials: &Credentials,
        api: &ApiEndpoint,
        timeout: Duration,
    ) -> Result<Self, LoadError> {
        let http_error = |source| LoadError::Http {
            operation: "client setup",
            source,
        };
        let ca = reqwest::Certificate::from_pem(&credentials.ca_pem).map_err(http_error)?;
        let mut builder = reqwest::Client::builder()
            .add_root_certificate(ca)
            .tls_built_in_root_certs(false)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout);
        if api.host_is_name() {
            builder = builder.resolve(api.host(), api.addr().addr());
        }
        Ok(Self {
            http: builder.build().map_err(http_error)?,
            base: api.base().to_owned(),
            host: credentials.host.clone(),
            policy: credentials.policy.clone(),
            key: credentials.key.clone(),
        })
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let sas = SasToken::generate(
            &self.host,
            &self.key,
            Some(&self.policy),
            now + SAS_LIFETIME_SECS,
        );
        self.http
            .request(
                method,
                format!("{}{path}?api-version={API_VERSION}", self.base),
            )
            .header("Authorization", sas)
    }

    /// Creates (or replaces) a symmetric-key enrollment group whose primary key is `key`.
    pub async fn put_group(
        &self,
        group: &EnrollmentGroupId,
        key: &SymmetricKey,
    ) -> Result<(), LoadError> {
        let attestation = serde_json::json!({"type": "symmetricKey", "symmetricKey": {
            "primaryKey": key.expose_base64(),
            "secondaryKey": SymmetricKey::generate().expose_base64(),
        }});
        self.put_group_with(group, attestation).await
    }

    /// Creates (or replaces) an X.509 enrollment group whose signing certificate is
    /// `ca_pem`.
    pub async fn put_x509_group(
        &self,
        group: &EnrollmentGroupId,
        ca_pem: &str,
    ) -> Result<(), LoadError> {
        let attestation = serde_json::json!({"type": "x509", "x509": {
            "signingCertificates": {"primary": {"certificate": ca_pem}},
        }});
        self.put_group_with(group, attestation).await
    }

    async fn put_group_with(
        &self,
        group: &EnrollmentGroupId,
        attestation: serde_json::Value,
    ) -> Result<(), LoadError> {
        const OP: &str = "create the enrollment group";
        let body = serde_json::json!({
            "enrollmentGroupId": group.as_str(),
            "attestation": attestation,
            "provisioningStatus": "enabled",
        });
        let response = self
            .request(
                Method::PUT,
                &format!("/enrollmentGroups/{}", group.as_str()),
            )
            .json(&body)
            .send()
            .await
            .map_err(|source| LoadError::Http {
                operation: OP,
                source,
            })?;
        expect(OP, response, &[StatusCode::OK, StatusCode::CREATED]).await?;
        Ok(())
    }

    /// Runs one bulk operation on individual enrollments (`mode` `update` creates or
    /// replaces, `delete` deletes); the ids that failed, with their error codes.
    async fn bulk_enrollments(
        &self,
        mode: &'static str,
        enrollments: Vec<serde_json::Value>,
    ) -> Result<Vec<(String, u32)>, LoadError> {
        const OP: &str = "bulk individual enrollment operation";
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct ItemError {
            registration_id: String,
            error_code: u32,
        }
        #[derive(Deserialize)]
        struct BulkResult {
            #[serde(default)]
            errors: Vec<ItemError>,
        }
        let http = |source| LoadError::Http {
            operation: OP,
            source,
        };
        let body = serde_json::json!({"mode": mode, "enrollments": enrollments});
        let response = self
            .request(Method::POST, "/enrollments")
            .json(&body)
            .send()
            .await
            .map_err(http)?;
        let result: BulkResult = expect(OP, response, &[StatusCode::OK])
            .await?
            .json()
            .await
            .map_err(http)?;
        Ok(result
            .errors
            .into_iter()
            .map(|e| (e.registration_id, e.error_code))
            .collect())
    }

    /// Every registration id of `group`, read page by page.
    pub async fn registration_ids(
        &self,
        group: &EnrollmentGroupId,
    ) -> Result<Vec<String>, LoadError> {
        let path = format!("/registrations/{}/query", group.as_str());
        self.query_ids("query registration states", &path, None)
            .await
    }

    /// The registration id of every individual enrollment, read page by page.
    pub async fn individual_enrollment_ids(&self) -> Result<Vec<String>, LoadError> {
        let all = serde_json::json!({"query": "*"});
        self.query_ids(
            "query individual enrollments",
            "/enrollments/query",
            Some(&all),
        )
        .await
    }

    /// The `registrationId` of every item a query at `path` returns, page by page.
    async fn query_ids(
        &self,
        operation: &'static str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Vec<String>, LoadError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Item {
            registration_id: String,
        }
        let http = |source| LoadError::Http { operation, source };
        let mut ids = Vec::new();
        let mut continuation: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut request = self
                .request(Method::POST, path)
                .header("x-ms-max-item-count", PAGE_SIZE);
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(token) = &continuation {
                request = request.header("x-ms-continuation", token);
            }
            let response = request.send().await.map_err(http)?;
            let next = response
                .headers()
                .get("x-ms-continuation")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let response = expect(operation, response, &[StatusCode::OK]).await?;
            let page: Vec<Item> = response.json().await.map_err(http)?;
            ids.extend(page.into_iter().map(|s| s.registration_id));
            if next.is_none() || next == continuation {
                return Ok(ids);
            }
            continuation = next;
        }
        Ok(ids)
    }

    /// Deletes one registration state; `false` if it was already gone.
    pub async fn delete_registration(&self, id: &str) -> Result<bool, LoadError> {
        self.delete(
            "delete a registration state",
            &format!("/registrations/{id}"),
        )
        .await
    }

    /// Deletes the group; `false` if it was already gone.
    pub async fn delete_group(&self, group: &EnrollmentGroupId) -> Result<bool, LoadError> {
        self.delete(
            "delete the enrollment group",
            &format!("/enrollmentGroups/{}", group.as_str()),
        )
        .await
    }

    async fn delete(&self, operation: &'static str, path: &str) -> Result<bool, LoadError> {
        let response = self
            .request(Method::DELETE, path)
            .send()
            .await
            .map_err(|source| LoadError::Http { operation, source })?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        expect(
            operation,
            response,
            &[StatusCode::NO_CONTENT, StatusCode::OK],
        )
        .await?;
        Ok(true)
    }
}

/// The response if its status is one of `ok`, else [`LoadError::Api`] with the body's start.
async fn expect(
    operation: &'static str,
    response: reqwest::Response,
    ok: &[StatusCode],
) -> Result<reqwest::Response, LoadError> {
    let status = response.status();
    if ok.contains(&status) {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    Err(LoadError::Api {
        operation,
        status: status.as_u16(),
        body: body.chars().take(MAX_QUOTED_BODY).collect(),
    })
}

/// What a cleanup removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CleanupSummary {
    /// Registration records deleted.
    pub registrations_deleted: usize,
    /// Whether the run's groups (one per attestation of the mix) all existed and were
    /// deleted.
    pub group_deleted: bool,
}

/// Creates (or replaces) a symmetric-key individual enrollment for each of `ids`, whose
/// primary key is derived from `master` and the id (as a group's device keys are), in bulk
/// operations of [`BULK_ITEMS`].
pub async fn put_individuals(
    service: &ServiceClient,
    ids: &[String],
    master: &SymmetricKey,
) -> Result<(), LoadError> {
    let batches: Vec<Vec<serde_json::Value>> = ids
        .chunks(BULK_ITEMS)
        .map(|chunk| {
            chunk
                .iter()
                .map(|id| {
                    let key = derive_device_key(master, id);
                    serde_json::json!({"registrationId": id,
                        "attestation": {"type": "symmetricKey", "symmetricKey": {
                            "primaryKey": key.expose_base64(),
                            "secondaryKey": SymmetricKey::generate().expose_base64(),
                        }},
                        "provisioningStatus": "enabled"})
                })
                .collect()
        })
        .collect();
    concurrently(batches, |batch| {
        let service = service.clone();
        async move {
            match service.bulk_enrollments("update", batch).await?.first() {
                None => Ok(()),
                Some((id, code)) => Err(LoadError::Api {
                    operation: "create individual enrollments",
                    status: u16::try_from(code / 1000).unwrap_or(0),
                    body: format!("{id}: error code {code}"),
                }),
            }
        }
    })
    .await?;
    Ok(())
}

/// Deletes the individual enrollments `ids`, in bulk operations; one already gone is not an
/// error.
async fn delete_individuals(service: &ServiceClient, ids: &[String]) -> Result<(), LoadError> {
    let batches: Vec<Vec<serde_json::Value>> = ids
        .chunks(BULK_ITEMS)
        .map(|chunk| {
            chunk
                .iter()
                .map(|id| serde_json::json!({"registrationId": id}))
                .collect()
        })
        .collect();
    concurrently(batches, |batch| {
        let service = service.clone();
        async move {
            let failed = service.bulk_enrollments("delete", batch).await?;
            match failed.iter().find(|(_, code)| code / 1000 != 404) {
                None => Ok(()),
                Some((id, code)) => Err(LoadError::Api {
                    operation: "delete individual enrollments",
                    status: u16::try_from(code / 1000).unwrap_or(0),
                    body: format!("{id}: error code {code}"),
                }),
            }
        }
    })
    .await?;
    Ok(())
}

/// Whether `id` is one of the run's device ids: `{prefix}-` and at least six digits.
fn is_device_id(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|n| n.len() >= 6 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// For each of `groups`: deletes every registration record of the group (a few passes, see
/// [`MAX_PASSES`]), then the group. With `individual_prefix`, then the individual enrollments
/// whose ids are device ids under it (found by a query, so a cut-short run or a later
/// `--cleanup-only` finds them all) and their records (records again after the enrollments:
/// a registration still in flight when the first pass ran is written by then).
pub async fn cleanup(
    service: &ServiceClient,
    groups: &[EnrollmentGroupId],
    individual_prefix: Option<&str>,
) -> Result<CleanupSummary, LoadError> {
    let mut summary = CleanupSummary {
        registrations_deleted: 0,
        group_deleted: true,
    };
    if let Some(prefix) = individual_prefix {
        let mut ids = service.individual_enrollment_ids().await?;
        ids.retain(|id| is_device_id(prefix, id));
        summary.registrations_deleted += delete_all(service, ids.clone()).await?;
        delete_individuals(service, &ids).await?;
        summary.registrations_deleted += delete_all(service, ids).await?;
    }
    for group in groups {
        for _ in 0..MAX_PASSES {
            let ids = service.registration_ids(group).await?;
            if ids.is_empty() {
                break;
            }
            summary.registrations_deleted += delete_all(service, ids).await?;
        }
        summary.group_deleted &= service.delete_group(group).await?;
    }
    Ok(summary)
}

/// Deletes the registration records `ids`, [`API_CONCURRENCY`] at a time; how many existed.
async fn delete_all(service: &ServiceClient, ids: Vec<String>) -> Result<usize, LoadError> {
    let existed = concurrently(ids, |id| {
        let service = service.clone();
        async move { service.delete_registration(&id).await }
    })
    .await?;
    Ok(existed.into_iter().filter(|e| *e).count())
}

/// Runs `task` on each of `items`, [`API_CONCURRENCY`] at a time; the results in completion
/// order, or the first error.
async fn concurrently<T, R, F, Fut>(items: Vec<T>, task: F) -> Result<Vec<R>, LoadError>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<R, LoadError>> + Send + 'static,
    R: Send + 'static,
{
    let mut items = items.into_iter();
    let mut tasks = JoinSet::new();
    let mut results = Vec::new();
    loop {
        while tasks.len() < API_CONCURRENCY {
            let Some(item) = items.next() else { break };
            tasks.spawn(task(item));
        }
        let Some(joined) = tasks.join_next().await else {
            return Ok(results);
        };
        match joined {
            Ok(Ok(result)) => results.push(result),
            Ok(Err(e)) => return Err(e),
            // A panicking task is a bug in this tool; surface it. (Nothing cancels these.)
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_runs_device_ids_are_cleaned_up() {
        assert!(is_device_id("lt", "lt-000042"));
        assert!(is_device_id("lt", "lt-1000000"));
        for other in [
            "lt-42",
            "lt-00004x",
            "lt000042",
            "lt-x-000042",
            "other-000042",
            "lt-",
        ] {
            assert!(!is_device_id("lt", other), "{other}");
        }
    }
}
