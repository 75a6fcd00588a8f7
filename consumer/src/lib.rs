//! Notifier side of txnotify.
//!
//! Modules:
//! - [`email`]: renders a `TransactionEvent` into an email and sends it over SMTP.

pub mod email;
