//! `txnotify` command-line program.

#[cfg(test)]
mod mail_sink;

fn main() {}
