//! How `pull`, `run --image`, `create --image`, `task --image` and `serve`
//! reach registries: flags (and the auth files Docker and podman write)
//! turned into `stockade_image::PullOptions`.

use std::path::PathBuf;

use clap::Args;
use stockade_image::PullOptions;

#[derive(Debug, Clone, Default, Args)]
pub struct RegistryFlags {
    /// Credentials for the registry, USER:PASSWORD (default: the auth file's)
    #[arg(long, value_name = "USER:PASSWORD")]
    pub creds: Option<String>,
    /// Auth file with registry credentials, as `docker login` / `podman login`
    /// write it [default: $REGISTRY_AUTH_FILE, then
    /// $XDG_RUNTIME_DIR/containers/auth.json, then ~/.docker/config.json]
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
    /// Extra CA certificate (PEM) to trust for registries, besides the system's
    #[arg(long = "registry-ca", value_name = "FILE")]
    pub registry_ca: Vec<PathBuf>,
    /// Registry (HOST[:PORT]) that may be reached over plain HTTP
    /// (loopback registries always may)
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,
    /// Mirror tried before a registry, REGISTRY=MIRROR (repeatable; e.g.
    /// docker.io=mirror.example:5000)
    #[arg(long = "registry-mirror", value_name = "REGISTRY=MIRROR")]
    pub registry_mirror: Vec<String>,
    /// Platform to pull, OS/ARCH[/VARIANT] [default: this host's]
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<String>,
}

impl RegistryFlags {
    /// The options a pull uses. Reads the environment for the default auth
    /// file locations (this is the edge; the library reads none).
    pub fn pull_options(&self) -> anyhow::Result<PullOptions> {
        let mut opts = PullOptions::default();
        if let Some(c) = &self.creds {
            let Some((u, p)) = c.split_once(':') else {
                anyhow::bail!("--creds must be USER:PASSWORD, got {c:?}");
            };
            opts.creds = Some((u.to_string(), p.to_string()));
        }
        match &self.authfile {
            Some(f) => opts.auth_files.push(f.clone()),
            None => {
                let var = |n: &str| std::env::var_os(n).filter(|v| !v.is_empty());
                if let Some(f) = var("REGISTRY_AUTH_FILE") {
                    opts.auth_files.push(f.into());
                }
                if let Some(d) = var("XDG_RUNTIME_DIR") {
                    opts.auth_files
                        .push(PathBuf::from(d).join("containers/auth.json"));
                }
                if let Some(h) = var("HOME") {
                    opts.auth_files
                        .push(PathBuf::from(h).join(".docker/config.json"));
                }
            }
        }
        opts.extra_ca = self.registry_ca.clone();
        opts.insecure = self.insecure_registry.clone();
        for m in &self.registry_mirror {
            let Some((reg, mirror)) = m.split_once('=') else {
                anyhow::bail!("--registry-mirror must be REGISTRY=MIRROR, got {m:?}");
            };
            opts.mirrors
                .entry(reg.to_string())
                .or_default()
                .push(mirror.to_string());
        }
        opts.platform = self.platform.clone();
        Ok(opts)
    }
}
