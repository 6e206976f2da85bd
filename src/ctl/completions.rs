//! `quotad ctl completions SHELL`: a completion script for the shell (clap_complete).
//! The `quotad` binary gives its whole command tree (serve, ledger, ctl, check-config);
//! the library alone knows `quotad ctl …` (`ctl_root`).

use std::io::Write;

use clap::Args;
use clap_complete::Shell;

use super::{Command, CtlArgs, CtlError, Ctx, Reply};

#[derive(clap::Args, Debug)]
pub struct Completions {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: Shell,
}

impl Completions {
    /// Writes the script completing `root` (named as the binary) for the shell.
    pub fn write(&self, root: &mut clap::Command, out: &mut dyn Write) -> Result<(), CtlError> {
        let name = root.get_name().to_owned();
        let mut buf = Vec::new();
        clap_complete::generate(self.shell, root, name, &mut buf);
        Ok(out.write_all(&buf)?)
    }

    /// The script completing `root` for the shell.
    pub fn script(&self, root: &mut clap::Command) -> Result<String, CtlError> {
        let mut buf = Vec::new();
        self.write(root, &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

/// `quotad` with only its `ctl` subcommand.
pub fn ctl_root() -> clap::Command {
    clap::Command::new("quotad").subcommand(CtlArgs::augment_args(clap::Command::new("ctl")))
}

impl Command for Completions {
    async fn call(self, _ctx: &mut Ctx<'_>) -> Result<Reply, CtlError> {
        Ok(Reply::Script(self.script(&mut ctl_root())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_complete_ctl_commands_and_values() {
        for (shell, want) in [
            (Shell::Bash, "top-up"),
            (Shell::Zsh, "top-up"),
            (Shell::Fish, "top-up"),
        ] {
            let script = Completions { shell }.script(&mut ctl_root()).unwrap();
            assert!(script.contains(want), "{shell}: {script}");
            assert!(script.contains("json"), "{shell}: --output values");
        }
    }
}
