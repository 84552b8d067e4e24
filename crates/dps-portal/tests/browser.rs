//! The portal in a real headless Chromium, driven over WebDriver against an in-process dpsd:
//! every step an operator takes, with PNG screenshots in `target/portal-screenshots/`.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian: `apt-get install -y chromium
//! chromium-driver`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use base64::Engine;
use dps_api::Rights;
use dps_store::{Precondition, RegistrationRecord};
use dps_types::{
    AssignedDeviceSubstatus, DeviceId, DeviceRegistrationState, EnrollmentGroupId,
    EnrollmentSettings, HubName, RegistrationId, RegistrationStatus, SymmetricKey, Timestamp,
};
use fantoccini::{Client, ClientBuilder, Locator};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const HUB_A: &str = "hub-a.example.net";
const HUB_B: &str = "hub-b.example.net";

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("portal-screenshots")
}

/// chromedriver on a free port, stopped (by its own handle) when dropped.
struct Driver {
    child: tokio::process::Child,
    url: String,
}

impl Driver {
    async fn start() -> Result<Driver> {
        ensure!(
            Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists(),
            "install the browser first: apt-get install -y chromium chromium-driver"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start chromedriver")?;
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        // Poll /status until it answers ready; bounded at about 20 s.
        for _ in 0..400 {
            if let Ok(r) = http.get(format!("{url}/status")).send().await {
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                if body["value"]["ready"] == true {
                    return Ok(Driver { child, url });
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("chromedriver did not become ready")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn browser(driver: &Driver, profile: &Path) -> Result<Client> {
    let caps = serde_json::json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--ignore-certificate-errors", "--disable-dev-shm-usage",
                format!("--user-data-dir={}", profile.display()),
            ]
        },
        "goog:loggingPrefs": { "browser": "ALL" }
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!()
    };
    Ok(ClientBuilder::rustls()?
        .capabilities(caps)
        .connect(&driver.url)
        .await?)
}

/// chromedriver's console log of the page, taken since the last call (`POST /se/log`).
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        (
            axum::http::Method::POST,
            Some(r#"{"type":"browser"}"#.to_owned()),
        )
    }
}

/// The console messages that report a Content-Security-Policy violation, since the last call.
async fn csp_violations(c: &Client) -> Result<Vec<String>> {
    let log = c.issue_cmd(BrowserLog).await?;
    let entries = log.as_array().context("browser log entries")?;
    Ok(entries
        .iter()
        .filter_map(|e| e["message"].as_str())
        .filter(|m| m.contains("Content Security Policy"))
        .map(str::to_owned)
        .collect())
}

struct Ui<'a> {
    c: &'a Client,
    base: String,
}

impl Ui<'_> {
    async fn go(&self, path: &str) -> Result<()> {
        Ok(self.c.goto(&format!("{}{path}", self.base)).await?)
    }

    async fn shot(&self, name: &str) -> Result<()> {
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("{name}.png")), self.c.screenshot().await?)?;
        Ok(())
    }

    async fn fill(&self, css: &str, text: &str) -> Result<()> {
        let e = self
            .c
            .find(Locator::Css(css))
            .await
            .context(css.to_owned())?;
        e.clear().await?;
        e.send_keys(text).await?;
        Ok(())
    }

    async fn click(&self, css: &str) -> Result<()> {
        self.c
            .find(Locator::Css(css))
            .await
            .context(css.to_owned())?
            .click()
            .await?;
        Ok(())
    }

    /// Clicks something that loads a new page and waits until the new page has loaded.
    async fn navigate_by(&self, element: fantoccini::elements::Element) -> Result<()> {
        self.c.execute("window.__oldPage = true;", vec![]).await?;
        element.click().await?;
        // Polls the document (bounded at about 10 s): a fresh one lacks the marker.
        for _ in 0..400 {
            let fresh = self
                .c
                .execute(
                    "return !window.__oldPage && document.readyState === 'complete';",
                    vec![],
                )
                .await?;
            if fresh == true {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("the page did not change")
    }

    async fn follow(&self, css: &str) -> Result<()> {
        let e = self
            .c
            .find(Locator::Css(css))
            .await
            .context(css.to_owned())?;
        self.navigate_by(e).await
    }

    async fn follow_link(&self, text: &str) -> Result<()> {
        let e = self
            .c
            .find(Locator::LinkText(text))
            .await
            .context(text.to_owned())?;
        self.navigate_by(e).await
    }

    async fn value(&self, css: &str) -> Result<String> {
        Ok(self
            .c
            .find(Locator::Css(css))
            .await?
            .prop("value")
            .await?
            .unwrap_or_default())
    }

    async fn text(&self) -> Result<String> {
        Ok(self.c.find(Locator::Css("main")).await?.text().await?)
    }

    async fn save(&self) -> Result<()> {
        self.follow("form.enrollment button.primary").await
    }

    async fn sign_in(&self, policy: &str, key: &str) -> Result<()> {
        self.go("/portal/").await?;
        self.fill("#policy", policy).await?;
        self.fill("#key", key).await?;
        self.follow("button[type=submit]").await
    }
}

fn field<'a>(connection_string: &'a str, name: &str) -> &'a str {
    connection_string
        .split(';')
        .find_map(|p| p.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
        .expect("field in connection string")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_walks_through_the_portal() -> Result<()> {
    // Both aws-lc-rs (the workspace's) and ring (fantoccini's hyper-rustls) are linked in.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let flags = dpsd::Flags {
        data_dir: Some(dir.path().join("data")),
        listen: Some("127.0.0.1:0".into()),
        mqtt_listen: Some("127.0.0.1:0".into()),
        amqp_listen: Some("127.0.0.1:0".into()),
        ..Default::default()
    };
    let mut config = dpsd::Config::load(
        None,
        [("DPSD_METRICS_LISTEN".to_owned(), "127.0.0.1:0".to_owned())],
        &flags,
    )?;
    for (host, weight) in [(HUB_A, 100), (HUB_B, 300)] {
        config.linked_hubs.push(dpsd::config::LinkedHubConfig {
            host_name: HubName::parse(host)?,
            allocation_weight: weight,
            apply_allocation_policy: true,
        });
    }
    let reader_key = SymmetricKey::generate();
    config.policies.push(dpsd::config::PolicyConfig {
        name: "reader".into(),
        primary_key: reader_key.clone(),
        secondary_key: None,
        rights: Rights::ENROLLMENT_READ | Rights::REGISTRATION_STATUS_READ,
    });
    let running = dpsd::start(config).await?;
    let driver = Driver::start().await?;
    let client = browser(&driver, &dir.path().join("chromium")).await?;
    let result = tokio::time::timeout(
        Duration::from_secs(240),
        walk(&client, &running, dir.path(), &reader_key.expose_base64()),
    )
    .await;
    let _ = client.close().await;
    drop(driver);
    running.shutdown().await?;
    result.context("the walk timed out")?
}

async fn walk(c: &Client, running: &dpsd::Running, dir: &Path, reader_key: &str) -> Result<()> {
    let ui = Ui {
        c,
        base: format!("https://localhost:{}", running.api_addr.port()),
    };
    let store = running.registrar.store();
    c.set_window_size(1280, 800).await?;

    // The API still answers next to the portal.
    ui.go("/enrollments/x?api-version=2021-10-01").await?;
    ensure!(
        c.source().await?.contains("errorCode"),
        "API behind the portal"
    );

    // Sign in with the owner policy.
    ui.go("/portal").await?;
    ui.shot("01-signin").await?;
    let owner = field(&running.connection_string, "SharedAccessKeyName");
    let key = field(&running.connection_string, "SharedAccessKey");
    ui.sign_in(owner, key).await?;

    // Add an enrollment group with an uploaded intermediate CA certificate.
    let pki = dps_test_util::TestPki::new();
    let ca_file = dir.join("intermediate.pem");
    std::fs::write(&ca_file, pki.intermediate_pem())?;
    ui.follow("a.button.primary").await?;
    ui.fill("#id", "factory-a").await?;
    ui.click("#mechanism-x509").await?;
    c.find(Locator::Css("#primary_cert"))
        .await?
        .send_keys(&ca_file.display().to_string())
        .await?;
    ui.click("input[name=iot_hubs][value='hub-a.example.net']")
        .await?;
    ui.fill("#initial_twin", r#"{"tags":{"line":"a"}}"#).await?;
    ui.click("#iot_edge").await?;
    ui.shot("02-add-group").await?;
    ui.save().await?;
    let text = ui.text().await?;
    ensure!(text.contains("Saved factory-a"), "group saved: {text}");
    ensure!(text.contains("X.509 (CA certificate)"), "{text}");
    ui.shot("03-groups").await?;
    let group = store
        .group(&EnrollmentGroupId::parse("factory-a")?)
        .context("group stored")?;
    ensure!(group.capabilities.is_some_and(|c| c.iot_edge));

    // Individual enrollments: X.509 (the registration id is the CN), TPM, symmetric key.
    let leaf = pki.device("x509-device-1");
    let leaf_file = dir.join("leaf.pem");
    std::fs::write(&leaf_file, &leaf.cert_pem)?;
    ui.go("/portal/individual/new").await?;
    ui.click("#mechanism-x509").await?;
    c.find(Locator::Css("#primary_cert"))
        .await?
        .send_keys(&leaf_file.display().to_string())
        .await?;
    ui.shot("04-add-individual").await?;
    ui.save().await?;
    ensure!(ui.text().await?.contains("Saved x509-device-1"));

    let mut ek = vec![0u8, 32];
    ek.extend([0xA5u8; 32]);
    let ek = base64::engine::general_purpose::STANDARD.encode(ek);
    ui.go("/portal/individual/new").await?;
    ui.click("#mechanism-tpm").await?;
    ui.fill("#id", "tpm-device-1").await?;
    ui.fill("#endorsement_key", &ek).await?;
    ui.save().await?;
    ensure!(ui.text().await?.contains("Saved tpm-device-1"));

    ui.go("/portal/individual/new").await?;
    ui.click("#mechanism-symmetricKey").await?;
    ui.fill("#id", "sym-device-1").await?;
    ui.save().await?;
    let text = ui.text().await?;
    for id in ["x509-device-1", "tpm-device-1", "sym-device-1"] {
        ensure!(text.contains(id), "{id} listed: {text}");
    }
    ui.shot("05-individual").await?;

    // A validation error keeps everything typed.
    ui.go("/portal/individual/new").await?;
    ui.click("#mechanism-symmetricKey").await?;
    ui.fill("#id", "bad id!").await?;
    ui.fill("#device_id", "keep-me").await?;
    ui.fill("#initial_twin", "[1, 2]").await?;
    ui.save().await?;
    let text = ui.text().await?;
    ensure!(text.contains("must be a JSON object"), "{text}");
    ensure!(ui.value("#id").await? == "bad id!");
    ensure!(ui.value("#device_id").await? == "keep-me");
    ensure!(ui.value("#initial_twin").await? == "[1, 2]");
    ensure!(
        c.find(Locator::Css("#mechanism-symmetricKey"))
            .await?
            .is_selected()
            .await?
    );
    ui.shot("06-validation-error").await?;

    // Details: change hub, device ID and initial twin.
    ui.go("/portal/enrollments?tab=individual&q=SYM").await?;
    ui.follow_link("sym-device-1").await?;
    c.find(Locator::Css("#allocation_policy"))
        .await?
        .select_by_value("static")
        .await?;
    c.find(Locator::Css("#static_hub"))
        .await?
        .select_by_value(HUB_B)
        .await?;
    ui.fill("#device_id", "renamed-device").await?;
    ui.fill(
        "#initial_twin",
        r#"{"properties":{"desired":{"interval":30}}}"#,
    )
    .await?;
    ui.save().await?;
    ensure!(ui.text().await?.contains("Saved."));
    ensure!(ui.value("#device_id").await? == "renamed-device");
    ensure!(ui.value("#static_hub").await? == HUB_B);
    ensure!(ui
        .value("#initial_twin")
        .await?
        .contains("\"interval\": 30"));
    ui.shot("07-details").await?;
    let stored = store
        .enrollment(&RegistrationId::parse("sym-device-1")?)
        .context("stored")?;
    ensure!(stored.device_id == Some(DeviceId::parse("renamed-device")?));
    ensure!(
        matches!(&stored.attestation, dps_types::Attestation::SymmetricKey(k) if k.primary_key.is_some())
    );

    // A save over a change made since the page was opened is refused and reported.
    ui.go("/portal/individual/tpm-device-1").await?;
    let tpm_id = RegistrationId::parse("tpm-device-1")?;
    let mut changed = (*store.enrollment(&tpm_id).context("tpm")?).clone();
    changed.device_id = Some(DeviceId::parse("changed-elsewhere")?);
    let rules = dps_attest::EnrollmentRules {
        linked_hubs: vec![HubName::parse(HUB_A)?, HubName::parse(HUB_B)?],
        ..Default::default()
    };
    let changed = dps_attest::prepare_individual(changed, &rules)?;
    store.put_enrollment(changed, &Precondition::Any).await?;
    ui.fill("#device_id", "mine").await?;
    ui.save().await?;
    let text = ui.text().await?;
    ensure!(text.contains("changed by someone else"), "{text}");
    ensure!(ui.value("#device_id").await? == "mine", "typed value kept");
    ui.shot("08-conflict").await?;
    let stored = store.enrollment(&tpm_id).context("tpm")?;
    ensure!(stored.device_id == Some(DeviceId::parse("changed-elsewhere")?));

    // Delete with confirmation.
    ui.go("/portal/enrollments?tab=individual").await?;
    ui.follow("a[aria-label='Delete tpm-device-1']").await?;
    ensure!(ui.text().await?.contains("Delete individual enrollment?"));
    ui.shot("09-confirm-delete").await?;
    ui.follow("button.danger").await?;
    let text = ui.text().await?;
    ensure!(text.contains("Deleted tpm-device-1"), "{text}");
    ensure!(!text.contains("tpm-device-1\n") && store.enrollment(&tpm_id).is_none());
    ensure!(c
        .find_all(Locator::LinkText("tpm-device-1"))
        .await?
        .is_empty());

    // Registration records, diagnostics, hubs and the dashboard.
    for (id, hub, group) in [
        ("x509-device-1", HUB_A, None),
        ("line-a-07", HUB_B, Some("factory-a")),
        ("line-a-08", HUB_B, Some("factory-a")),
    ] {
        let mut state = DeviceRegistrationState::unassigned(RegistrationId::parse(id)?);
        state.assigned_hub = Some(HubName::parse(hub)?);
        state.device_id = Some(DeviceId::parse(id)?);
        state.status = Some(RegistrationStatus::Assigned);
        state.substatus = Some(AssignedDeviceSubstatus::InitialAssignment);
        state.created_date_time_utc = Some(Timestamp::now());
        store
            .put_registration(
                RegistrationRecord {
                    state,
                    enrollment_group_id: group.map(EnrollmentGroupId::parse).transpose()?,
                },
                &Precondition::Any,
            )
            .await?;
    }
    running.registrar.diagnostics().record(
        "line-a-07",
        dps_registrar::FailedAttempt {
            time_utc: Timestamp::now(),
            transport: dps_registrar::Transport::Mqtt,
            reason: "x509_chain_untrusted",
            detail: "the chain does not lead to the certificate of group factory-a".into(),
        },
    );
    ui.go("/portal/registrations").await?;
    ensure!(ui.text().await?.contains("line-a-08"));
    ui.shot("10-registrations").await?;
    ui.follow_link("line-a-07").await?;
    ensure!(ui.text().await?.contains("x509_chain_untrusted"));
    ui.shot("11-registration-details").await?;
    ui.follow("a.button.danger").await?;
    ui.follow("button.danger").await?;
    ensure!(store
        .registration(&RegistrationId::parse("line-a-07")?)
        .is_none());
    ui.go("/portal/hubs").await?;
    ensure!(ui.text().await?.contains("50.0 %"));
    ui.shot("12-hubs").await?;
    ui.go("/portal/dashboard").await?;
    ensure!(ui.text().await?.contains("registrations / s"));
    ui.shot("13-dashboard").await?;

    // A phone's width.
    c.set_window_size(390, 844).await?;
    ui.go("/portal/enrollments?tab=individual").await?;
    ui.shot("14-phone-individual").await?;
    ui.go("/portal/groups/factory-a").await?;
    ui.shot("15-phone-group-details").await?;
    c.set_window_size(1280, 800).await?;

    // A read-only policy: no buttons, and a forged POST is refused.
    ui.follow("header button.link").await?;
    ui.sign_in("reader", reader_key).await?;
    let text = ui.text().await?;
    ensure!(text.contains("factory-a") && !text.contains("Add enrollment group"));
    ui.go("/portal/groups/factory-a").await?;
    ensure!(c
        .find_all(Locator::Css("form.enrollment button.primary"))
        .await?
        .is_empty());
    ensure!(c
        .find_all(Locator::Css("a.button.danger"))
        .await?
        .is_empty());
    ui.shot("16-read-only").await?;
    let status = c
        .execute(
            r#"const body = new FormData();
               body.append("csrf", document.querySelector("input[name=csrf]").value);
               body.append("allocation_policy", "hashed");
               body.append("status", "disabled");
               body.append("reprovision", "never");
               return fetch("/portal/groups/factory-a", {method: "POST", body})
                 .then(r => r.status);"#,
            vec![],
        )
        .await?;
    ensure!(status == 403, "forged POST answered {status}");
    let status = c
        .execute(
            r#"const body = new FormData();
               body.append("csrf", document.querySelector("input[name=csrf]").value);
               return fetch("/portal/groups/factory-a/delete", {method: "POST", body})
                 .then(r => r.status);"#,
            vec![],
        )
        .await?;
    ensure!(status == 403, "forged delete answered {status}");
    let group = store
        .group(&EnrollmentGroupId::parse("factory-a")?)
        .context("group kept")?;
    ensure!(group.is_enabled());

    // Every page above loaded and worked without a Content-Security-Policy violation...
    let violations = csp_violations(c).await?;
    ensure!(violations.is_empty(), "CSP violations: {violations:#?}");
    // ...and the policy is enforced: an injected inline script does not run, and is reported.
    let ran = c
        .execute(
            r#"const s = document.createElement("script");
               s.textContent = "window.__injected = true;";
               document.body.appendChild(s);
               return window.__injected === true;"#,
            vec![],
        )
        .await?;
    ensure!(ran == false, "an inline script ran");
    let violations = csp_violations(c).await?;
    ensure!(
        violations.iter().any(|m| m.contains("script-src")),
        "the injected script was not reported: {violations:#?}"
    );
    Ok(())
}
