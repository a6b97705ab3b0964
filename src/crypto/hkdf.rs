//! MDK derivation exactly as the grant issuer (mana-auth, WebCrypto) does it.
//!
//! Rules:
//! - HKDF-SHA256, IKM = the user's 32-byte master key, salt = UTF-8 of the
//!   mission id, info = UTF-8 of
//!   `mana-ai-mission-grant:v1:tables=<sorted, comma-joined>:ids=<sorted, comma-joined>`,
//!   output 32 bytes.
//! - "Sorted" means JavaScript's default `Array.prototype.sort`: by UTF-16 code
//!   units. That differs from Rust's `str` order (UTF-8 bytes = code points)
//!   once an astral-plane character (a surrogate pair, 0xD800..0xDFFF) meets a
//!   BMP character at or above U+E000; any other order derives another key and
//!   every ciphertext of the mission becomes unreadable.
//! - Duplicates are kept, as JavaScript keeps them.

use std::cmp::Ordering;

use sha2::Sha256;

use super::mdk::{Mdk, MDK_LEN};

const INFO_PREFIX: &str = "mana-ai-mission-grant:v1";

/// Compares two strings the way JavaScript's default sort does.
fn js_cmp(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

/// Sorts strings as JavaScript's default `sort()` would.
pub fn js_sort<S: AsRef<str>>(items: &[S]) -> Vec<&str> {
    let mut sorted: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    sorted.sort_by(|a, b| js_cmp(a, b));
    sorted
}

/// The HKDF `info` string for a grant's scope.
pub fn grant_info<T: AsRef<str>, R: AsRef<str>>(tables: &[T], record_ids: &[R]) -> String {
    format!(
        "{INFO_PREFIX}:tables={}:ids={}",
        js_sort(tables).join(","),
        js_sort(record_ids).join(",")
    )
}

/// Derives the mission data key from the user's master key and the grant scope.
pub fn derive_mdk<T: AsRef<str>, R: AsRef<str>>(
    master: &[u8; 32],
    mission_id: &str,
    tables: &[T],
    record_ids: &[R],
) -> Mdk {
    let info = grant_info(tables, record_ids);
    let hk = ::hkdf::Hkdf::<Sha256>::new(Some(mission_id.as_bytes()), master);
    let mut okm = [0u8; MDK_LEN];
    // 32 bytes is far below HKDF-SHA256's limit of 255 * 32, so this cannot fail.
    hk.expand(info.as_bytes(), &mut okm)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    let mdk = Mdk::from_bytes(okm);
    zeroize::Zeroize::zeroize(&mut okm);
    mdk
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn js_order_differs_from_rust_order_for_astral_chars() {
        let ids = [
            "notes:\u{FF61}",
            "notes:\u{1F600}",
            "notes:\u{E000}",
            "notes:a",
        ];
        // JavaScript: a (0x61) < U+1F600 (0xD83D..) < U+E000 < U+FF61.
        assert_eq!(
            js_sort(&ids),
            [
                "notes:a",
                "notes:\u{1F600}",
                "notes:\u{E000}",
                "notes:\u{FF61}"
            ]
        );
        let mut rust_order = ids.to_vec();
        rust_order.sort();
        assert_eq!(
            rust_order,
            [
                "notes:a",
                "notes:\u{E000}",
                "notes:\u{FF61}",
                "notes:\u{1F600}"
            ]
        );
    }

    #[test]
    fn js_sort_keeps_duplicates_and_is_case_sensitive() {
        assert_eq!(js_sort(&["b", "B", "a", "b"]), ["B", "a", "b", "b"]);
        assert!(js_sort::<&str>(&[]).is_empty());
    }

    #[test]
    fn info_string_layout() {
        assert_eq!(
            grant_info(&["tasks", "notes"], &["tasks:2", "notes:1"]),
            "mana-ai-mission-grant:v1:tables=notes,tasks:ids=notes:1,tasks:2"
        );
        assert_eq!(
            grant_info::<&str, &str>(&[], &[]),
            "mana-ai-mission-grant:v1:tables=:ids="
        );
    }

    #[test]
    fn derivation_depends_on_every_input_but_not_on_input_order() {
        let master = [7u8; 32];
        let base = derive_mdk(&master, "m1", &["notes", "tasks"], &["notes:1"]);
        assert_eq!(
            base,
            derive_mdk(&master, "m1", &["tasks", "notes"], &["notes:1"])
        );
        assert_ne!(
            base,
            derive_mdk(&[8u8; 32], "m1", &["notes", "tasks"], &["notes:1"])
        );
        assert_ne!(
            base,
            derive_mdk(&master, "m2", &["notes", "tasks"], &["notes:1"])
        );
        assert_ne!(base, derive_mdk(&master, "m1", &["notes"], &["notes:1"]));
        assert_ne!(
            base,
            derive_mdk(&master, "m1", &["notes", "tasks"], &["notes:1", "notes:2"])
        );
    }

    #[test]
    fn salt_is_mission_id_and_info_is_the_literal_scope_string() {
        // Pins the wiring (salt vs info vs IKM) against a hand-written info
        // string; the WebCrypto vectors pin the whole derivation.
        let master = [3u8; 32];
        let mut expected = [0u8; 32];
        ::hkdf::Hkdf::<Sha256>::new(Some(b"mission"), &master)
            .expand(
                b"mana-ai-mission-grant:v1:tables=notes:ids=notes:x",
                &mut expected,
            )
            .unwrap();
        assert_eq!(
            derive_mdk(&master, "mission", &["notes"], &["notes:x"]),
            Mdk::from_bytes(expected)
        );
    }
}
