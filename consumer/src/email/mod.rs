//! Email stage: turns a `TransactionEvent` into an email.
//!
//! 1. [`render`]: [`Renderer::render`] produces the subject, a plain-text body
//!    and an HTML body from embedded templates in English or German.
//!    Producer-supplied text is cleaned and length-capped, and HTML is
//!    escaped, so event fields cannot inject markup or header lines.
//! 2. [`message`]: [`build_message`] assembles a `multipart/alternative`
//!    message whose `Message-ID` is derived from the event id, so a resend of
//!    the same event is recognisable downstream.

pub mod message;
pub mod render;
mod text;

#[cfg(test)]
mod test_support;

pub use self::message::{build_message, BuildError, EventIdHeader};
pub use self::render::{RenderConfig, RenderError, RenderedEmail, Renderer};
