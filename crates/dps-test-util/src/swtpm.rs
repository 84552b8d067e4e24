//! A real software TPM as the device: Debian's `swtpm` on free loopback ports, driven with
//! `tpm2-tools` over the `swtpm:` TCTI, doing what the Azure TPM clients do with DPS's
//! activation blob (dps-protocol.md §5.2 item 3): ActivateCredential with the EK policy
//! session, Import of the identity key under the SRK, Load, HMAC. [`SoftwareTpm::activate`]
//! does all of it for a whole blob, [`SoftwareTpm::sas_token`] signs a device token with the
//! loaded key as the Node TPM client does.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// The persistent handles the Azure TPM clients use for the EK and the SRK.
const EK_HANDLE: &str = "0x81010001";
const SRK_HANDLE: &str = "0x81000001";
/// tpm2-tools' credential file: magic, version, then the two TPM2Bs.
const CREDENTIAL_FILE_HEADER: [u8; 8] = [0xba, 0xdc, 0xc0, 0xde, 0, 0, 0, 1];

/// A running `swtpm`, killed (its own PID) when dropped.
pub struct SoftwareTpm {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

/// The parts of an activation blob, as the clients unmarshal it.
pub struct BlobParts<'a> {
    pub credential_blob: &'a [u8],
    pub encrypted_secret: &'a [u8],
    pub duplicate: &'a [u8],
    pub encrypted_seed: &'a [u8],
    pub public: &'a [u8],
}

/// Splits a blob into its five `TPM2B`s (each with its size field) and the sized
/// `encUriData`, which must be the end.
pub fn split(blob: &[u8]) -> BlobParts<'_> {
    let mut rest = blob;
    let mut next = || {
        let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let (part, tail) = rest.split_at(2 + size);
        rest = tail;
        part
    };
    let parts = BlobParts {
        credential_blob: next(),
        encrypted_secret: next(),
        duplicate: next(),
        encrypted_seed: next(),
        public: next(),
    };
    assert_eq!(next(), [0, 0], "encUriData is empty");
    assert!(rest.is_empty(), "nothing follows encUriData");
    parts
}

impl SoftwareTpm {
    /// Starts `swtpm` (TPM 2.0, initialized and started) with its state in a fresh directory,
    /// and creates the EK (`tpm2_createek`, the TCG default RSA 2048 template the Azure clients
    /// use too) and the SRK (the Azure clients' template), persisted at the clients' handles.
    pub fn start() -> Self {
        for tool in [
            "swtpm",
            "tpm2_createek",
            "tpm2_activatecredential",
            "tpm2_import",
        ] {
            let found = Command::new(tool).arg("--version").output();
            assert!(
                found.is_ok(),
                "{tool} is not installed: install the Debian packages swtpm, swtpm-tools and \
                 tpm2-tools (scripts/test.sh does)"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let mut tries = 0;
        let (child, port) = loop {
            tries += 1;
            let port = free_port_pair();
            let mut child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .arg("--tpmstate")
                .arg(format!("dir={}", dir.path().display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            if wait_listening(&mut child, port) {
                break (child, port);
            }
            // Another process took a port between our probe and swtpm's bind.
            let _ = child.kill();
            let _ = child.wait();
            assert!(tries < 5, "swtpm did not start listening on loopback");
        };
        let tpm = Self { child, port, dir };
        tpm.run(
            "tpm2_createek",
            &["-c", EK_HANDLE, "-G", "rsa", "-u", &tpm.path_str("ek.pub")],
        );
        tpm.run(
            "tpm2_createprimary",
            &[
                "-C",
                "o",
                "-g",
                "sha256",
                "-G",
                "rsa2048:null:aes128cfb",
                "-a",
                "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda",
                "-c",
                &tpm.path_str("srk.ctx"),
            ],
        );
        tpm.run(
            "tpm2_evictcontrol",
            &["-C", "o", "-c", &tpm.path_str("srk.ctx"), SRK_HANDLE],
        );
        tpm.run("tpm2_flushcontext", &["-t"]);
        tpm.run(
            "tpm2_readpublic",
            &["-c", SRK_HANDLE, "-o", &tpm.path_str("srk.pub")],
        );
        tpm
    }

    /// The EK's `TPM2B_PUBLIC`, as `tpm2_createek -u` wrote it.
    pub fn endorsement_key(&self) -> Vec<u8> {
        std::fs::read(self.path("ek.pub")).unwrap()
    }

    /// The SRK's `TPM2B_PUBLIC`, as `tpm2_readpublic -o` wrote it.
    pub fn storage_root_key(&self) -> Vec<u8> {
        std::fs::read(self.path("srk.pub")).unwrap()
    }

    /// `tpm2_activatecredential` with the credential of `parts`, under the EK policy session
    /// (PolicySecret on the endorsement hierarchy): the inner wrap key, or the tool's
    /// failure.
    pub fn activate_credential(&self, parts: &BlobParts) -> Result<Vec<u8>, String> {
        let mut file = CREDENTIAL_FILE_HEADER.to_vec();
        file.extend_from_slice(parts.credential_blob);
        file.extend_from_slice(parts.encrypted_secret);
        std::fs::write(self.path("credential.bin"), file).unwrap();
        let session = self.path_str("session.ctx");
        self.run(
            "tpm2_startauthsession",
            &["--policy-session", "-S", &session],
        );
        self.run("tpm2_policysecret", &["-S", &session, "-c", "e"]);
        let activated = self.try_run(
            "tpm2_activatecredential",
            &[
                "-c",
                SRK_HANDLE,
                "-C",
                EK_HANDLE,
                "-i",
                &self.path_str("credential.bin"),
                "-o",
                &self.path_str("inner-wrap-key.bin"),
                "-P",
                &format!("session:{session}"),
            ],
        );
        self.run("tpm2_flushcontext", &[&session]);
        activated.map(|_| std::fs::read(self.path("inner-wrap-key.bin")).unwrap())
    }

    /// `tpm2_import` of the identity key under the SRK with the inner wrap key, then
    /// `tpm2_load`: the key's context file, or the failing tool's message.
    pub fn import_and_load(
        &self,
        parts: &BlobParts,
        inner_wrap_key: &[u8],
    ) -> Result<PathBuf, String> {
        std::fs::write(self.path("id.pub"), parts.public).unwrap();
        std::fs::write(self.path("id.dup"), parts.duplicate).unwrap();
        std::fs::write(self.path("id.seed"), parts.encrypted_seed).unwrap();
        std::fs::write(self.path("inner.key"), inner_wrap_key).unwrap();
        self.try_run(
            "tpm2_import",
            &[
                "-C",
                SRK_HANDLE,
                "-u",
                &self.path_str("id.pub"),
                "-i",
                &self.path_str("id.dup"),
                "-s",
                &self.path_str("id.seed"),
                "-k",
                &self.path_str("inner.key"),
                "-r",
                &self.path_str("id.priv"),
            ],
        )?;
        self.try_run(
            "tpm2_load",
            &[
                "-C",
                SRK_HANDLE,
                "-u",
                &self.path_str("id.pub"),
                "-r",
                &self.path_str("id.priv"),
                "-c",
                &self.path_str("id.ctx"),
            ],
        )?;
        Ok(self.path("id.ctx"))
    }

    /// The whole of what a client does with a base64 activation blob (`authenticationKey`):
    /// ActivateCredential, Import, Load. The loaded key's context, or the failing tool's
    /// message.
    pub fn activate(&self, authentication_key: &str) -> Result<PathBuf, String> {
        let blob = STANDARD
            .decode(authentication_key)
            .map_err(|e| format!("the blob is not base64: {e}"))?;
        let parts = split(&blob);
        let inner_wrap_key = self.activate_credential(&parts)?;
        self.import_and_load(&parts, &inner_wrap_key)
    }

    /// The device SAS token the Node TPM client builds (`_createRegistrationSas`) for
    /// `{scope}/registrations/{registration_id}`: `sr` is `encodeURIComponent` of it, the TPM
    /// signs `sr + "\n" + se` with the loaded key `context`.
    pub fn sas_token(
        &self,
        context: &Path,
        scope: &str,
        registration_id: &str,
        expiry: i64,
    ) -> String {
        let sr = format!("{scope}/registrations/{registration_id}").replace('/', "%2F");
        let signature = self.hmac(context, format!("{sr}\n{expiry}").as_bytes());
        let sig = STANDARD
            .encode(signature)
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D");
        format!("SharedAccessSignature sr={sr}&sig={sig}&se={expiry}&skn=registration")
    }

    /// A keyed-hash key of the TPM's own making under the SRK (`tpm2_create -G hmac`), loaded:
    /// a TPM key DPS never sealed.
    pub fn own_hmac_key(&self) -> PathBuf {
        self.run(
            "tpm2_create",
            &[
                "-C",
                SRK_HANDLE,
                "-G",
                "hmac",
                "-u",
                &self.path_str("own.pub"),
                "-r",
                &self.path_str("own.priv"),
            ],
        );
        self.run(
            "tpm2_load",
            &[
                "-C",
                SRK_HANDLE,
                "-u",
                &self.path_str("own.pub"),
                "-r",
                &self.path_str("own.priv"),
                "-c",
                &self.path_str("own.ctx"),
            ],
        );
        self.path("own.ctx")
    }

    /// `tpm2_hmac` of `message` with the loaded key `context`: the signature, computed inside
    /// the TPM. Transient objects are flushed afterwards (swtpm has three slots and no
    /// resource manager).
    pub fn hmac(&self, context: &Path, message: &[u8]) -> Vec<u8> {
        std::fs::write(self.path("message.bin"), message).unwrap();
        self.run(
            "tpm2_hmac",
            &[
                "-c",
                &context.display().to_string(),
                "-g",
                "sha256",
                "-o",
                &self.path_str("signature.bin"),
                &self.path_str("message.bin"),
            ],
        );
        self.run("tpm2_flushcontext", &["-t"]);
        std::fs::read(self.path("signature.bin")).unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn path_str(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn command(&self, tool: &str, args: &[&str]) -> Output {
        Command::new(tool)
            .args(args)
            .env(
                "TPM2TOOLS_TCTI",
                format!("swtpm:host=127.0.0.1,port={}", self.port),
            )
            .output()
            .unwrap_or_else(|e| panic!("{tool} did not run: {e}"))
    }

    fn try_run(&self, tool: &str, args: &[&str]) -> Result<Output, String> {
        let output = self.command(tool, args);
        if output.status.success() {
            Ok(output)
        } else {
            Err(format!(
                "{tool} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> Output {
        self.try_run(tool, args).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for SoftwareTpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port `p` such that `p` and `p + 1` are free on loopback (swtpm's TCTI finds the control
/// channel at the server port + 1).
fn free_port_pair() -> u16 {
    loop {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// Waits until `swtpm` accepts on `port`, or has exited. The probe connection closes at
/// once, which swtpm takes as a client that left.
fn wait_listening(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
