//! `peft merge --base DIR --adapter DIR --out DIR`.

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// Base model folder.
    #[arg(long)]
    pub base: std::path::PathBuf,
}

pub fn run(_args: MergeArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
