//! Users and their passwords, hashed as RabbitMQ does
//! (`rabbit_password_hashing_sha256`): base64(salt[4] ‖ sha256(salt ‖ password)),
//! so definitions exported from RabbitMQ keep working passwords.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub password_hash: String,
    pub tags: Vec<String>,
}

pub fn hash_password(password: &str, salt: [u8; 4]) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    let mut out = salt.to_vec();
    out.extend_from_slice(&h.finalize());
    STANDARD.encode(out)
}

impl User {
    pub fn new(name: &str, password: &str, tags: Vec<String>) -> Self {
        User { name: name.to_string(), password_hash: hash_password(password, rand::random()), tags }
    }

    pub fn check_password(&self, password: &str) -> bool {
        let Ok(raw) = STANDARD.decode(&self.password_hash) else {
            return false;
        };
        if raw.len() != 36 {
            return false;
        }
        let salt: [u8; 4] = [raw[0], raw[1], raw[2], raw[3]];
        // Constant-time enough for a salted hash compare: compare all bytes.
        let expected = hash_password(password, salt);
        expected.len() == self.password_hash.len()
            && expected.bytes().zip(self.password_hash.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verifies_and_rejects() {
        let u = User::new("guest", "guest", vec![]);
        assert!(u.check_password("guest"));
        assert!(!u.check_password("nope"));
        // A RabbitMQ-format hash with a fixed salt round-trips.
        let h = hash_password("guest", [1, 2, 3, 4]);
        assert_eq!(STANDARD.decode(&h).unwrap().len(), 36);
    }
}
