//! How a process authenticates to NATS and protects the connection: a
//! `.creds` file (JWT + nkey seed, NATS decentralised auth), a bare nkey
//! seed, user and password, or a token; TLS with a private CA and client
//! certificates (mutual TLS). Secret values are [`SecretString`]s: they are
//! never printed, not even by `Debug`.

use std::path::PathBuf;

use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;

/// NATS credentials and TLS (`EXO_NATS__*`; every field optional).
#[derive(Clone, Default, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default)]
pub struct NatsAuth {
    /// A `.creds` file (user JWT and nkey seed).
    pub creds_file: Option<PathBuf>,
    /// An nkey seed (`SU…`).
    #[serde(skip_serializing)]
    #[schemars(with = "Option<String>")]
    pub nkey_seed: Option<SecretString>,
    /// User name, with `password`.
    pub user: Option<String>,
    /// Password, with `user`.
    #[serde(skip_serializing)]
    #[schemars(with = "Option<String>")]
    pub password: Option<SecretString>,
    /// Token.
    #[serde(skip_serializing)]
    #[schemars(with = "Option<String>")]
    pub token: Option<SecretString>,
    /// Insist on TLS even when the server does not ask for it (a `tls://`
    /// URL does the same).
    pub require_tls: bool,
    /// PEM file of the CA(s) that signed the server's certificate.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS, with `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub tls_key_file: Option<PathBuf>,
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: &Option<SecretString>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("NatsAuth")
            .field("creds_file", &self.creds_file)
            .field("nkey_seed", &set(&self.nkey_seed))
            .field("user", &self.user)
            .field("password", &set(&self.password))
            .field("token", &set(&self.token))
            .field("require_tls", &self.require_tls)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .finish()
    }
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Two ways to authenticate at once.
    #[error("NATS credentials: set only one of creds_file, nkey_seed, user/password and token")]
    Ambiguous,
    /// A user without a password or the reverse.
    #[error("NATS credentials: user and password go together")]
    HalfUser,
    /// A client certificate without its key or the reverse.
    #[error("NATS TLS: tls_cert_file and tls_key_file go together")]
    HalfCertificate,
    /// A file that cannot be read.
    #[error("NATS credentials file {0}: {1}")]
    File(PathBuf, std::io::Error),
}

impl NatsAuth {
    /// Checks that the settings make one coherent choice.
    pub fn validate(&self) -> Result<(), AuthError> {
        let ways = [
            self.creds_file.is_some(),
            self.nkey_seed.is_some(),
            self.user.is_some() || self.password.is_some(),
            self.token.is_some(),
        ];
        if ways.iter().filter(|w| **w).count() > 1 {
            return Err(AuthError::Ambiguous);
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(AuthError::HalfUser);
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(AuthError::HalfCertificate);
        }
        Ok(())
    }

    /// `opts` with these credentials and TLS settings.
    pub async fn apply(
        &self,
        mut opts: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, AuthError> {
        self.validate()?;
        if let Some(path) = &self.creds_file {
            opts = opts
                .credentials_file(path)
                .await
                .map_err(|e| AuthError::File(path.clone(), e))?;
        }
        if let Some(seed) = &self.nkey_seed {
            opts = opts.nkey(seed.expose_secret().to_string());
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            opts = opts.user_and_password(user.clone(), password.expose_secret().to_string());
        }
        if let Some(token) = &self.token {
            opts = opts.token(token.expose_secret().to_string());
        }
        if self.require_tls {
            opts = opts.require_tls(true);
        }
        if let Some(ca) = &self.tls_ca_file {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        Ok(opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print_and_choices_are_checked() {
        let auth = NatsAuth {
            user: Some("svc".into()),
            password: Some(SecretString::from("hunter2-pw")),
            ..Default::default()
        };
        assert!(auth.validate().is_ok());
        let shown = format!("{auth:?}");
        assert!(!shown.contains("hunter2-pw"), "{shown}");
        assert!(shown.contains("svc"));
        let both = NatsAuth {
            token: Some(SecretString::from("t0k")),
            ..auth.clone()
        };
        assert!(matches!(both.validate(), Err(AuthError::Ambiguous)));
        assert!(!format!("{both:?}").contains("t0k"));
        let half = NatsAuth {
            user: Some("svc".into()),
            ..Default::default()
        };
        assert!(matches!(half.validate(), Err(AuthError::HalfUser)));
        let cert = NatsAuth {
            tls_cert_file: Some("c.pem".into()),
            ..Default::default()
        };
        assert!(matches!(cert.validate(), Err(AuthError::HalfCertificate)));
    }
}
