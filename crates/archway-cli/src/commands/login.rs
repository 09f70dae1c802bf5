//! `archway login` and `archway logout`: credentials in Docker's config file, shared with
//! docker and podman.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use anyhow::{Context, bail};
use archway_client::Credentials;
use clap::Args;

use super::common::{RegistryArgs, block_on};

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Registry host[:port] (default: Docker Hub).
    #[arg(default_value = "docker.io")]
    registry: String,
    /// User name.
    #[arg(short, long)]
    username: Option<String>,
    /// Password (visible in the process list; prefer --password-stdin).
    #[arg(short, long)]
    password: Option<String>,
    /// Read the password from standard input.
    #[arg(long, conflicts_with = "password")]
    password_stdin: bool,
    #[command(flatten)]
    registry_args: RegistryArgs,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// Registry host[:port] (default: Docker Hub).
    #[arg(default_value = "docker.io")]
    registry: String,
    #[command(flatten)]
    registry_args: RegistryArgs,
}

fn registry_host(s: &str) -> String {
    let s = s
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_start_matches("docker://");
    let host = s.split('/').next().unwrap_or(s);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        h => h.to_owned(),
    }
}

pub fn login(args: LoginArgs) -> anyhow::Result<ExitCode> {
    let registry = registry_host(&args.registry);
    let interactive = std::io::stdin().is_terminal();
    let username = match args.username {
        Some(u) => u,
        None if interactive && !args.password_stdin => {
            eprint!("Username: ");
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim().to_owned()
        }
        None => bail!("no user name: pass --username USER"),
    };
    let password = if let Some(p) = args.password {
        p
    } else if args.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    } else if interactive {
        rpassword::prompt_password("Password: ").context("reading the password")?
    } else {
        bail!("no password: pass --password-stdin and pipe it in");
    };
    if username.is_empty() || password.is_empty() {
        bail!("user name and password must not be empty");
    }
    let creds = Credentials::password(&username, &password);
    // Verify before storing: a wrong password must not end up in the config file.
    let mut check = args.registry_args.clone();
    check.creds = Some(format!("{username}:{password}"));
    let client = check.client(&[&registry])?;
    block_on(client.ping(&registry))?
        .with_context(|| format!("logging in to {registry} as {username}"))?;
    let config = args.registry_args.docker_config();
    config
        .store(&registry, &creds)
        .with_context(|| format!("saving credentials to {}", config.path().display()))?;
    println!(
        "Login Succeeded ({registry}, credentials in {})",
        config.path().display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn logout(args: LogoutArgs) -> anyhow::Result<ExitCode> {
    let registry = registry_host(&args.registry);
    let config = args.registry_args.docker_config();
    if config.erase(&registry)? {
        println!(
            "Removed credentials for {registry} from {}",
            config.path().display()
        );
    } else {
        println!("Not logged in to {registry}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn registry_hosts() {
        assert_eq!(
            super::registry_host("https://index.docker.io/v1/"),
            "docker.io"
        );
        assert_eq!(super::registry_host("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(super::registry_host("ghcr.io/org/x"), "ghcr.io");
    }
}
