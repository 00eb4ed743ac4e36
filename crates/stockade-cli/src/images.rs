//! The image commands: `stockade pull`, `images`, `rmi`, `image prune`,
//! `image inspect` (and the `image pull|ls|rm` aliases). Each opens the
//! store under the state directory and calls `stockade_image`; this file
//! only turns flags into calls and results into text.

mod progress;
mod text;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use stockade_image::{Source, Store, StoreError, StoreLimits};

use crate::registry_flags::RegistryFlags;

pub use progress::PullProgress;

/// `--state-dir`, as every command that keeps state takes it.
#[derive(Debug, Args)]
pub struct StateDirArg {
    /// Stockade's state directory (the store is its `images/`).
    #[arg(long, env = "STOCKADE_STATE_DIR", default_value_os_t = crate::paths::state_dir())]
    pub state_dir: PathBuf,
}

impl StateDirArg {
    fn store(&self) -> anyhow::Result<Store> {
        open_store(&self.state_dir)
    }
}

fn open_store(state: &Path) -> anyhow::Result<Store> {
    Ok(stockade_core::image::open_store(
        state,
        StoreLimits::default(),
    )?)
}

#[derive(Debug, Args)]
pub struct PullArgs {
    #[command(flatten)]
    pub registry: RegistryFlags,
    /// Print no progress; only the image's digest on stdout.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub state: StateDirArg,
    /// The image: NAME[:TAG|@DIGEST] (Docker's defaults: docker.io,
    /// library/, latest), or a local source oci:DIR[:TAG],
    /// oci-archive:FILE[:TAG], docker-archive:FILE[:NAME].
    #[arg(value_name = "REF")]
    pub reference: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Show whole digests instead of their first 12 hex digits.
    #[arg(long)]
    pub digests: bool,
    #[command(flatten)]
    pub state: StateDirArg,
}

#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Remove the name even while a sandbox uses the image (its layers
    /// stay until it is gone and `stockade image prune` runs).
    #[arg(short, long)]
    pub force: bool,
    #[command(flatten)]
    pub state: StateDirArg,
    /// Images: names (python:3.11), digests, or 12+ hex digits of a digest.
    #[arg(value_name = "REF", required = true)]
    pub refs: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub state: StateDirArg,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub state: StateDirArg,
    /// The image: a name, a digest, or 12+ hex digits of one.
    #[arg(value_name = "REF")]
    pub reference: String,
}

/// `stockade image …`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pull an image into the store (same as `stockade pull`).
    Pull(Box<PullArgs>),
    /// List the images in the store (same as `stockade images`).
    #[command(visible_alias = "list")]
    Ls(ImagesArgs),
    /// Remove images (same as `stockade rmi`).
    #[command(visible_alias = "remove")]
    Rm(RmiArgs),
    /// Remove layers and blobs no tagged image and no live sandbox uses.
    Prune(PruneArgs),
    /// Print an image's configuration (JSON).
    Inspect(InspectArgs),
}

pub fn image(cmd: ImageCommand) -> anyhow::Result<u8> {
    match cmd {
        ImageCommand::Pull(a) => pull(*a),
        ImageCommand::Ls(a) => images(a),
        ImageCommand::Rm(a) => rmi(a),
        ImageCommand::Prune(a) => prune(a),
        ImageCommand::Inspect(a) => inspect(a),
    }
}

/// `stockade pull`: progress on stderr, the digest as stdout's last line.
pub fn pull(args: PullArgs) -> anyhow::Result<u8> {
    let source = Source::parse(&args.reference)?;
    let opts = args.registry.pull_options()?;
    let store = args.state.store()?;
    let stderr = std::io::stderr();
    let mode = if args.quiet {
        progress::Mode::Quiet
    } else if stderr.is_terminal() {
        progress::Mode::Bars
    } else {
        progress::Mode::Lines
    };
    let mut bars = PullProgress::new(stderr.lock(), mode);
    let result = stockade_image::pull(&store, &source, &opts, &mut |p| {
        bars.event(p, std::time::Instant::now())
    });
    bars.finish();
    drop(bars);
    let image = result.with_context(|| format!("cannot pull {}", args.reference))?;
    if !args.quiet {
        let names = if image.names.is_empty() {
            String::new()
        } else {
            format!(" as {}", image.names.join(", "))
        };
        eprintln!(
            "pulled {}{names} ({})",
            image.digest,
            text::size(image.size)
        );
    }
    emit(&format!("{}\n", image.digest))?;
    Ok(0)
}

/// What the store knows `input` by: a digest (or 12+ hex digits of one)
/// as given; a name canonicalised (`python:3.11` →
/// `docker.io/library/python:3.11`); a local source by the name its pull
/// recorded.
pub fn store_key(input: &str) -> anyhow::Result<String> {
    let hex = input.strip_prefix("sha256:").unwrap_or(input);
    if hex.len() >= 12 && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(input.to_ascii_lowercase());
    }
    match Source::parse(input)? {
        Source::Registry(r) => Ok(r.canonical()),
        local => match local.store_name() {
            Some(name) => Ok(name),
            None => bail!(
                "{input:?} names no image in the store; give its digest (`stockade images --digests` lists them)"
            ),
        },
    }
}

/// `stockade images`.
pub fn images(args: ImagesArgs) -> anyhow::Result<u8> {
    let store = args.state.store()?;
    let list = store.list()?;
    let text = match args.format {
        Format::Json => serde_json::to_string_pretty(&list)? + "\n",
        Format::Table => text::table(&list, args.digests, text::unix_now()),
    };
    emit(&text)?;
    Ok(0)
}

/// `stockade rmi`: each REF in turn; the first failure stops with its
/// error after what was removed before it is printed.
pub fn rmi(args: RmiArgs) -> anyhow::Result<u8> {
    // Every REF is checked before anything is removed.
    let keys = args
        .refs
        .iter()
        .map(|r| store_key(r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let store = args.state.store()?;
    for (input, key) in args.refs.iter().zip(keys) {
        let removed = match store.remove(&key, args.force) {
            Ok(r) => r,
            Err(StoreError::NotFound(_)) => {
                bail!("no image {input:?} in the store; `stockade images` lists them")
            }
            Err(e @ StoreError::InUse { .. }) => {
                bail!("{e}; destroy the sandbox first, or give --force to remove only the name")
            }
            Err(e) => return Err(e).with_context(|| format!("cannot remove {input}")),
        };
        let mut text = String::new();
        for name in &removed.untagged {
            text.push_str(&format!("Untagged: {name}\n"));
        }
        for d in removed.images.iter().chain(&removed.layers) {
            text.push_str(&format!("Deleted: {d}\n"));
        }
        emit(&text)?;
    }
    Ok(0)
}

/// `stockade image prune`.
pub fn prune(args: PruneArgs) -> anyhow::Result<u8> {
    let store = args.state.store()?;
    let removed = store.prune()?;
    let mut text = String::new();
    for d in &removed.images {
        text.push_str(&format!("Deleted image: {d}\n"));
    }
    for d in &removed.layers {
        text.push_str(&format!("Deleted layer: {d}\n"));
    }
    text.push_str(&format!(
        "Total reclaimed space: {}\n",
        text::size(removed.bytes)
    ));
    emit(&text)?;
    Ok(0)
}

/// `stockade image inspect`: the configuration blob, pretty.
pub fn inspect(args: InspectArgs) -> anyhow::Result<u8> {
    let key = store_key(&args.reference)?;
    let store = args.state.store()?;
    let Some(image) = store.resolve(&key)? else {
        bail!(
            "no image {:?} in the store; `stockade images` lists them, `stockade pull {}` fetches it",
            args.reference,
            args.reference
        );
    };
    let config = store.config_json(&image)?;
    emit(&(serde_json::to_string_pretty(&config)? + "\n"))?;
    Ok(0)
}

/// Writes `text` to stdout; a reader that went away (`| head`) is not an
/// error.
fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to stdout"))
        }
        _ => Ok(()),
    }
}
