//! Email stage: turns a `TransactionEvent` into an email and delivers it over
//! SMTP.
//!
//! The stage runs in three steps, each in its own module:
//!
//! 1. [`render`]: [`Renderer::render`] produces the subject, a plain-text body
//!    and an HTML body from embedded templates in English or German.
//!    Producer-supplied text is cleaned and length-capped, and HTML is
//!    escaped, so event fields cannot inject markup or header lines.
//! 2. [`message`]: [`build_message`] assembles a `multipart/alternative`
//!    message whose `Message-ID` is derived from the event id, so a resend of
//!    the same event is recognisable downstream.
//! 3. [`smtp`]: [`SmtpSender::send`] delivers the message with a timeout on
//!    every SMTP phase and a small connection pool, and classifies every
//!    failure as transient, permanent or unknown outcome
//!    ([`SendFailureClass`]).
//!
//! Failures that depend only on the event ([`RenderError::UnknownCurrency`],
//! [`BuildError::InvalidRecipient`]) are permanent: retrying the same event
//! gives the same result.
//!
//! ```no_run
//! # async fn example(event: txnotify_schemas::TransactionEvent) -> Result<(), Box<dyn std::error::Error>> {
//! use txnotify_consumer::email::{build_message, RenderConfig, Renderer, SmtpConfig, SmtpSender};
//!
//! let renderer = Renderer::new(&RenderConfig::default())?;
//! let sender = SmtpSender::new(SmtpConfig {
//!     host: "smtp.example.com".to_owned(),
//!     from: "Payments <payments@example.com>".to_owned(),
//!     ..SmtpConfig::default()
//! })?;
//!
//! let rendered = renderer.render(&event)?;
//! let message = build_message(&event, &rendered, sender.sender_mailbox(), sender.message_id_domain())?;
//! let receipt = sender.send(&message).await?;
//! println!("accepted with {}", receipt.code);
//! # Ok(())
//! # }
//! ```

pub mod message;
pub mod render;
pub mod smtp;
mod text;

#[cfg(test)]
mod test_support;

pub use self::message::{build_message, BuildError, EventIdHeader};
pub use self::render::{RenderConfig, RenderError, RenderedEmail, Renderer};
pub use self::smtp::{
    ConfigError, ConnectionFailure, Phase, SendError, SendFailureClass, SmtpConfig, SmtpReceipt,
    SmtpSender, TlsMode,
};
