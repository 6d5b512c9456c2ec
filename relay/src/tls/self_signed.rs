//! Self-signed mode: a certificate for the given names, generated once and
//! kept in the data directory.

use super::*;

/// The self-signed certificate for `names`: loaded from `dir` when it holds one for exactly
/// these names, generated (and saved to `dir`, if any) otherwise. Returns the key and the
/// certificate in PEM.
pub(super) fn self_signed(
    names: &[String],
    dir: Option<&Path>,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, String), TlsError> {
    if names.is_empty() || names.iter().any(|name| name.trim().is_empty()) {
        return Err(TlsError::NoNames);
    }
    let names_line = names.join("\n") + "\n";
    if let Some(dir) = dir
        && let Some(loaded) = load_self_signed(dir, &names_line, provider)?
    {
        tracing::info!(?names, dir = %dir.display(), "TLS: reusing the saved self-signed certificate");
        return Ok(loaded);
    }

    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "Tandem relay (self-signed)");
    let key_pair = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key_pair)?;
    let cert_pem = cert.pem();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
    let certified = CertifiedKey::new(
        vec![cert.der().clone()],
        provider.key_provider.load_private_key(key_der).map_err(TlsError::Config)?,
    );
    tracing::info!(?names, "TLS: generated a self-signed certificate");

    if let Some(dir) = dir {
        crate::fsmode::create_private_dir(dir)
            .map_err(|source| TlsError::Write { path: dir.to_path_buf(), source })?;
        // Key and certificate first, names last: the names file marks a complete set.
        write_file(&dir.join(SELF_SIGNED_KEY_FILE), key_pair.serialize_pem().as_bytes(), true)?;
        write_file(&dir.join(SELF_SIGNED_CERT_FILE), cert_pem.as_bytes(), false)?;
        write_file(&dir.join(SELF_SIGNED_NAMES_FILE), names_line.as_bytes(), false)?;
        tracing::info!(dir = %dir.display(), "TLS: saved the self-signed certificate");
    }
    Ok((certified, cert_pem))
}

/// The self-signed certificate saved in `dir`, if there is a valid one for `names_line`.
pub(super) fn load_self_signed(
    dir: &Path,
    names_line: &str,
    provider: &CryptoProvider,
) -> Result<Option<(CertifiedKey, String)>, TlsError> {
    let names_path = dir.join(SELF_SIGNED_NAMES_FILE);
    let cert_path = dir.join(SELF_SIGNED_CERT_FILE);
    let key_path = dir.join(SELF_SIGNED_KEY_FILE);
    match std::fs::read(&names_path) {
        Ok(saved) if saved == names_line.as_bytes() => {}
        Ok(_) => {
            tracing::info!(
                dir = %dir.display(),
                "TLS: the saved self-signed certificate is for other names; replacing it"
            );
            return Ok(None);
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(TlsError::Read { what: "names", path: names_path, source }),
    }
    let cert_bytes = read_file(WHAT_CERT, &cert_path);
    let loaded = cert_bytes.and_then(|cert_bytes| {
        let chain = parse_cert_chain(&cert_path, &cert_bytes)?;
        let key = parse_private_key(&key_path, &read_file(WHAT_KEY, &key_path)?)?;
        let certified = certified_key(chain, key, provider, &cert_path, &key_path)?;
        Ok((certified, cert_bytes))
    });
    match loaded {
        Ok((certified, cert_bytes)) => match String::from_utf8(cert_bytes) {
            Ok(cert_pem) => Ok(Some((certified, cert_pem))),
            Err(_) => {
                tracing::warn!(
                    file = %cert_path.display(),
                    "TLS: the saved self-signed certificate is not UTF-8 PEM; replacing it"
                );
                Ok(None)
            }
        },
        // Unreadable files are an error: regenerating could not save over them either.
        Err(err @ TlsError::Read { .. }) => Err(err),
        Err(err) => {
            tracing::warn!(error = %err, "TLS: the saved self-signed certificate is unusable; replacing it");
            Ok(None)
        }
    }
}

/// Writes a file readable by the owner only (0600 on Unix, whatever the
/// umask; the certificate too: the relay's data directory is private).
pub(super) fn write_file(path: &Path, contents: &[u8], _private: bool) -> Result<(), TlsError> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    crate::fsmode::private_file(path, &mut options)
        .and_then(|mut file| file.write_all(contents).and_then(|()| file.sync_all()))
        .map_err(|source| TlsError::Write { path: path.to_path_buf(), source })
}
