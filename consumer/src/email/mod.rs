//! Email stage: turns a `TransactionEvent` into an email.
//!
//! [`render`]: [`Renderer::render`] produces the subject, a plain-text body
//! and an HTML body from embedded templates in English or German.
//! Producer-supplied text is cleaned and length-capped, and HTML is escaped,
//! so event fields cannot inject markup or header lines.

pub mod render;
mod text;

#[cfg(test)]
mod test_support;

pub use self::render::{RenderConfig, RenderError, RenderedEmail, Renderer};
