//! `rest data`: fetch, make and show datasets.

use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum DataCommand {
    /// Describe the datasets found under the data directory.
    Show,
}

pub fn run(args: &DataArgs) -> Result<()> {
    match args.command {
        DataCommand::Show => anyhow::bail!("`rest data show` is not implemented yet"),
    }
}
