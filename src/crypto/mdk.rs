//! The mission data key (MDK): 32 bytes that decrypt a mission's inputs.
//!
//! Rules: zeroed on drop; no `Clone` (one owner per run, so there is one copy
//! to zero); `Debug` prints no bytes; equality is constant-time; the bytes are
//! readable only inside the crate.

use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of an MDK in bytes (AES-256).
pub const MDK_LEN: usize = 32;

/// A mission data key. Dropping it zeroes the bytes.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Mdk([u8; MDK_LEN]);

impl Mdk {
    /// Takes ownership of raw key bytes. The caller's array is a copy the
    /// caller should zero if it outlives this call.
    pub fn from_bytes(bytes: [u8; MDK_LEN]) -> Self {
        Mdk(bytes)
    }

    /// Copies a slice that must be exactly 32 bytes long.
    pub(crate) fn from_slice(bytes: &[u8]) -> Option<Self> {
        let array: [u8; MDK_LEN] = bytes.try_into().ok()?;
        Some(Mdk(array))
    }

    pub(crate) fn bytes(&self) -> &[u8; MDK_LEN] {
        &self.0
    }
}

impl PartialEq for Mdk {
    /// Constant-time: compares every byte so the time does not reveal where
    /// two keys first differ.
    fn eq(&self, other: &Self) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Eq for Mdk {}

impl std::fmt::Debug for Mdk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mdk(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_bytes() {
        let mdk = Mdk::from_bytes([0xAB; MDK_LEN]);
        let shown = format!("{mdk:?}");
        assert_eq!(shown, "Mdk(<redacted>)");
        assert!(!shown.contains("171") && !shown.to_lowercase().contains("ab"));
    }

    #[test]
    fn equality_and_slice_length() {
        assert_eq!(Mdk::from_bytes([1; 32]), Mdk::from_bytes([1; 32]));
        let mut other = [1; 32];
        other[31] = 2;
        assert_ne!(Mdk::from_bytes([1; 32]), Mdk::from_bytes(other));
        assert!(Mdk::from_slice(&[0; 31]).is_none());
        assert!(Mdk::from_slice(&[0; 33]).is_none());
        assert!(Mdk::from_slice(&[0; 32]).is_some());
    }
}
