//! The `tracing` subscriber of every command but `registry serve` (which has its access log):
//! library warnings reach the user on stderr as `warning: message field=value…`. `ARCHWAY_LOG`
//! (an `EnvFilter`, e.g. `debug` or `archway_client=debug`) shows more.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// `warning: message field=value`, like the CLI's own messages.
struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warning",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        write!(w, "{level}: ")?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Installs the subscriber (warnings and errors unless `ARCHWAY_LOG` says otherwise).
pub fn init() {
    let filter = EnvFilter::try_from_env("ARCHWAY_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    // Fails only if a subscriber is already installed, which is then the one to use.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .event_format(Plain)
        .try_init();
}
