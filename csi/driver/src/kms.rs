//! Encryption keys: one random passphrase per volume, kept only wrapped, behind a KMS.
//!
//! An encrypted volume is LUKS2 on its RBD image, its header written at CreateVolume
//! (`luks`: librbd's layout, made by cryptsetup). Its passphrase is 32
//! random bytes (base64), generated at CreateVolume, never written anywhere in the
//! clear: the KMS wraps it, and the node unwraps it at NodeStageVolume only to hand it to
//! the attach path (a pipe to strake-rbd-fuse, stdin of `cryptsetup`), never argv, an
//! environment variable, a log line or a file.
//!
//! [`Kms`] is the interface; [`SecretKms`] the one implemented: the key-encryption key
//! comes from the Kubernetes Secret the StorageClass already names for provisioning and
//! staging (key `encryptionPassphrase`), and the wrapped passphrase is stored in the
//! image's metadata (`strake.csi/dek`): AES-256-GCM under a key derived with HKDF-SHA256
//! from the Secret's value and the volume's uuid, which is also the associated data, so
//! a wrapped key copied to another volume does not open. Vault, cloud KMSs or KMIP would
//! implement the same three calls.
//!
//! Clones and restores inherit their source's LUKS header (copy-on-write: the header is
//! data), so they get the source's passphrase, wrapped again for their own uuid. Ceph 16's
//! librbd cannot change keyslots, so re-keying a clone needs cryptsetup on a mapped
//! device; rotating the Secret's KEK means re-wrapping every volume's metadata.
use std::collections::HashMap;

use crate::errors::Error;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use strake_ceph::Image;
use uuid::Uuid;

/// The Secret key holding the key-encryption key.
pub const SECRET_KEY: &str = "encryptionPassphrase";
/// Image metadata: the wrapped passphrase, and which KMS wrapped it.
pub const DEK_KEY: &str = "strake.csi/dek";
pub const KMS_KEY: &str = "strake.csi/kms";

/// A volume's LUKS passphrase. Zeroed on drop; `Debug` never shows it.
pub struct Passphrase(Vec<u8>);

impl Passphrase {
    pub fn generate() -> Result<Self, Error> {
        let mut raw = [0u8; 32];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| Error::internal("no randomness for a volume passphrase"))?;
        let p = base64::engine::general_purpose::STANDARD.encode(raw);
        raw.iter_mut().for_each(|b| *b = 0);
        Ok(Passphrase(p.into_bytes()))
    }
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

impl Drop for Passphrase {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// Where volume passphrases are kept, wrapped.
pub trait Kms {
    /// The name recorded with the volume (`strake.csi/kms`).
    fn name(&self) -> &'static str;
    /// Stores `p` for volume `uuid`, whose image is `img`.
    fn store(&self, img: &Image, uuid: &Uuid, p: &Passphrase) -> Result<(), Error>;
    /// The passphrase of volume `uuid`.
    fn fetch(&self, img: &Image, uuid: &Uuid) -> Result<Passphrase, Error>;
}

/// The KEK from the request's Secret, the wrapped passphrase in image metadata.
pub struct SecretKms {
    kek: Vec<u8>,
}

impl SecretKms {
    /// From a CSI request's secrets; `rpc` and `secret_param` name them in errors.
    pub fn from_secrets(secrets: &HashMap<String, String>, rpc: &str, secret_param: &str) -> Result<Self, Error> {
        let kek = secrets
            .get(SECRET_KEY)
            .map(|s| s.trim())
            .filter(|s| s.len() >= 16)
            .ok_or_else(|| {
                Error::invalid_argument(format!(
                    "{rpc}: an encrypted volume needs {SECRET_KEY} (at least 16 characters) in the Secret named by \
                     csi.storage.k8s.io/{secret_param}-secret-name"
                ))
            })?;
        Ok(SecretKms {
            kek: kek.as_bytes().to_vec(),
        })
    }

    fn key(&self, uuid: &Uuid) -> LessSafeKey {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, uuid.as_bytes());
        let info = [b"strake-csi volume passphrase".as_slice()];
        let prk = salt.extract(&self.kek);
        let okm = prk.expand(&info, &AES_256_GCM).expect("HKDF output of one AES-256 key");
        LessSafeKey::new(UnboundKey::from(okm))
    }

    pub fn wrap(&self, uuid: &Uuid, p: &Passphrase) -> Result<String, Error> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| Error::internal("no randomness for a nonce"))?;
        let mut buf = p.bytes().to_vec();
        let aad = uuid.to_string();
        self.key(uuid)
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| Error::internal("wrapping the volume passphrase failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    pub fn unwrap(&self, uuid: &Uuid, wrapped: &str) -> Result<Passphrase, Error> {
        let bad = || {
            Error::permission_denied(format!(
                "the passphrase of volume {uuid} does not unwrap with this Secret's {SECRET_KEY}: \
                 the Secret changed, or the metadata belongs to another volume"
            ))
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(wrapped.trim())
            .map_err(|_| bad())?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(bad());
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let mut buf = ct.to_vec();
        let aad = uuid.to_string();
        let plain = self
            .key(uuid)
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad())?,
                Aad::from(aad.as_bytes()),
                &mut buf,
            )
            .map_err(|_| bad())?;
        let p = Passphrase(plain.to_vec());
        buf.iter_mut().for_each(|b| *b = 0);
        Ok(p)
    }
}

impl Kms for SecretKms {
    fn name(&self) -> &'static str {
        "secret"
    }

    fn store(&self, img: &Image, uuid: &Uuid, p: &Passphrase) -> Result<(), Error> {
        let w = self.wrap(uuid, p)?;
        img.metadata_set(DEK_KEY, &w)
            .and_then(|_| img.metadata_set(KMS_KEY, self.name()))
            .map_err(|e| crate::errors::ceph("storing the wrapped passphrase", e))
    }

    fn fetch(&self, img: &Image, uuid: &Uuid) -> Result<Passphrase, Error> {
        let w = img
            .metadata_get(DEK_KEY)
            .map_err(|e| crate::errors::ceph("reading the wrapped passphrase", e))?
            .ok_or_else(|| {
                Error::failed_precondition(format!(
                    "volume {uuid} is marked encrypted but its image has no {DEK_KEY}: its key is lost"
                ))
            })?;
        self.unwrap(uuid, &w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kms(k: &str) -> SecretKms {
        SecretKms::from_secrets(&HashMap::from([(SECRET_KEY.to_string(), k.to_string())]), "t", "p").unwrap()
    }

    #[test]
    fn wrapped_passphrases_open_only_with_their_kek_and_volume() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let p = Passphrase::generate().unwrap();
        assert_eq!(p.bytes().len(), 44);
        let k = kms("a-long-enough-key-encryption-key");
        let w = k.wrap(&a, &p).unwrap();
        assert!(!w.contains(std::str::from_utf8(p.bytes()).unwrap()));
        assert_eq!(k.unwrap(&a, &w).unwrap().bytes(), p.bytes());
        assert_eq!(
            k.unwrap(&b, &w).unwrap_err().kind(),
            crate::errors::Kind::PermissionDenied
        );
        assert!(kms("another-key-encryption-key!!").unwrap(&a, &w).is_err());
        assert_ne!(k.wrap(&a, &p).unwrap(), w, "a fresh nonce each time");
        assert_eq!(format!("{p:?}"), "Passphrase(<redacted>)");
        assert!(SecretKms::from_secrets(&HashMap::new(), "CreateVolume", "provisioner")
            .err()
            .unwrap()
            .message()
            .contains(SECRET_KEY));
    }
}
