//! The accepted syntax of a recipient email address.
//!
//! The rules are a strict subset of the RFC 5321 and RFC 5322 address syntax, chosen so
//! that SMTP servers and mail libraries accept the address and it cannot inject anything
//! into a mail header:
//!
//! - 1 to [`MAX_ADDRESS_CHARS`] characters, ASCII only (no internationalized addresses),
//!   with no whitespace or control characters and exactly one `@`.
//! - The local part before the `@` has 1 to [`MAX_LOCAL_PART_CHARS`] characters. It is a
//!   dot-separated run of letters, digits and ``!#$%&'*+-/=?^_`{|}~`` with no leading,
//!   trailing or doubled dot. Quoted local parts, double quotes, angle brackets, commas,
//!   semicolons and backslashes are rejected.
//! - The domain has at least two dot-separated labels. Each label has 1 to
//!   [`MAX_DOMAIN_LABEL_CHARS`] letters, digits or hyphens and does not start or end with a
//!   hyphen. IP address literals such as `[192.0.2.1]` are rejected.
//!
//! The JSON Schema encodes the same rules as a regular expression; a test checks that both
//! give the same verdict on a table of addresses.

/// Maximum length of an address: the 256-octet RFC 5321 path limit minus the angle brackets.
pub const MAX_ADDRESS_CHARS: usize = 254;

/// Maximum length of the local part (RFC 5321, section 4.5.3.1.1).
pub const MAX_LOCAL_PART_CHARS: usize = 64;

/// Maximum length of one domain label (RFC 1035, section 2.3.4).
pub const MAX_DOMAIN_LABEL_CHARS: usize = 63;

/// Special characters allowed in the local part besides letters, digits and dots: the
/// RFC 5322 `atext` set.
const LOCAL_PART_SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";

/// Checks `address` against the rules in the module documentation.
///
/// The error is a lowercase reason such as `local part must be 1 to 64 characters, got 70`.
/// It never contains the address, so it is safe to log.
pub fn check_address(address: &str) -> Result<(), String> {
    if address.is_empty() {
        return Err("must not be empty".to_owned());
    }

    let length = address.chars().count();
    if length > MAX_ADDRESS_CHARS {
        return Err(format!(
            "must be at most {MAX_ADDRESS_CHARS} characters, got {length}"
        ));
    }

    if !address.is_ascii() {
        return Err(
            "must contain only ASCII characters because internationalized addresses are not supported"
                .to_owned(),
        );
    }

    if address
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err("must not contain whitespace or control characters".to_owned());
    }

    let at_signs = address.bytes().filter(|&b| b == b'@').count();
    if at_signs != 1 {
        return Err(format!("must contain exactly one '@', found {at_signs}"));
    }

    let (local_part, domain) = address
        .split_once('@')
        .expect("the address contains exactly one '@'");
    check_local_part(local_part)?;
    check_domain(domain)
}

fn check_local_part(local_part: &str) -> Result<(), String> {
    let length = local_part.len();
    if length == 0 || length > MAX_LOCAL_PART_CHARS {
        return Err(format!(
            "local part before '@' must be 1 to {MAX_LOCAL_PART_CHARS} characters, got {length}"
        ));
    }

    let allowed =
        |c: char| c.is_ascii_alphanumeric() || c == '.' || LOCAL_PART_SPECIALS.contains(c);
    if !local_part.chars().all(allowed) {
        return Err(format!(
            "local part may contain only letters, digits, dots and {LOCAL_PART_SPECIALS}"
        ));
    }

    if local_part.split('.').any(str::is_empty) {
        return Err(
            "local part must not start or end with a dot or contain two dots in a row".to_owned(),
        );
    }

    Ok(())
}

fn check_domain(domain: &str) -> Result<(), String> {
    if domain.split('.').any(str::is_empty) {
        return Err(
            "domain must not be empty, start or end with a dot, or contain two dots in a row"
                .to_owned(),
        );
    }

    if !domain.contains('.') {
        return Err("domain must have at least two labels separated by dots".to_owned());
    }

    for label in domain.split('.') {
        if label.len() > MAX_DOMAIN_LABEL_CHARS {
            return Err(format!(
                "domain labels must be at most {MAX_DOMAIN_LABEL_CHARS} characters, got {}",
                label.len()
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("domain labels may contain only letters, digits and hyphens".to_owned());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("domain labels must not start or end with a hyphen".to_owned());
        }
    }

    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_common_addresses() {
        let addresses = [
            "jane@example.com",
            "jane.doe@mail.example.co.uk",
            "o'brien+receipts@example-shop.de",
            "x@a.bc",
            "user_name-1@sub-domain.example123.org",
            "!#$%&'*+-/=?^_`{|}~@example.com",
        ];
        for address in addresses {
            assert_eq!(check_address(address), Ok(()), "address {address:?}");
        }
    }

    #[test]
    fn rejects_with_reason() {
        let cases = [
            ("", "must not be empty"),
            ("jane.example.com", "exactly one '@', found 0"),
            ("jane@doe@example.com", "exactly one '@', found 2"),
            ("Jane <jane@example.com>", "whitespace"),
            ("jane @example.com", "whitespace"),
            ("jane@example.com\r\nBcc: x@example.com", "whitespace"),
            ("jäne@example.com", "ASCII"),
            ("\"jane\"@example.com", "local part may contain only"),
            ("<jane@example.com>", "local part may contain only"),
            ("jane,joe@example.com", "local part may contain only"),
            ("@example.com", "local part before '@' must be 1 to 64"),
            (".jane@example.com", "must not start or end with a dot"),
            ("jane.@example.com", "must not start or end with a dot"),
            ("ja..ne@example.com", "two dots in a row"),
            ("jane@localhost", "at least two labels"),
            ("jane@", "domain must not be empty"),
            ("jane@example..com", "domain must not be empty"),
            ("jane@example.com.", "domain must not be empty"),
            ("jane@-example.com", "must not start or end with a hyphen"),
            ("jane@example-.com", "must not start or end with a hyphen"),
            ("jane@exa_mple.com", "only letters, digits and hyphens"),
            ("jane@[192.0.2.1]", "only letters, digits and hyphens"),
        ];
        for (address, expected) in cases {
            let reason = check_address(address).expect_err(address);
            assert!(
                reason.contains(expected),
                "address {address:?}: reason {reason:?} lacks {expected:?}"
            );
        }
    }

    #[test]
    fn length_limits() {
        let local_64 = "a".repeat(64);
        assert_eq!(check_address(&format!("{local_64}@example.com")), Ok(()));

        let local_65 = "a".repeat(65);
        let reason = check_address(&format!("{local_65}@example.com")).unwrap_err();
        assert_eq!(
            reason,
            "local part before '@' must be 1 to 64 characters, got 65"
        );

        let label_63 = "b".repeat(63);
        assert_eq!(check_address(&format!("a@{label_63}.com")), Ok(()));

        let label_64 = "b".repeat(64);
        let reason = check_address(&format!("a@{label_64}.com")).unwrap_err();
        assert_eq!(
            reason,
            "domain labels must be at most 63 characters, got 64"
        );

        // 64 + 1 + 63 + 1 + 63 + 1 + 61 = 254 characters.
        let longest = format!("{local_64}@{label_63}.{label_63}.{}", "c".repeat(61));
        assert_eq!(longest.len(), MAX_ADDRESS_CHARS);
        assert_eq!(check_address(&longest), Ok(()));

        let too_long = format!("{longest}c");
        let reason = check_address(&too_long).unwrap_err();
        assert_eq!(reason, "must be at most 254 characters, got 255");
    }

    #[test]
    fn reasons_never_contain_the_address() {
        let addresses = [
            "secret.person@example",
            "secret.person@@example.com",
            "secret person@example.com",
            "secret..person@example.com",
        ];
        for address in addresses {
            let reason = check_address(address).unwrap_err();
            assert!(!reason.contains("secret"), "reason {reason:?}");
        }
    }
}
