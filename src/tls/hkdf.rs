//! The TLS 1.3 cipher suites of the aws-lc-rs provider with a cheaper key schedule.
//!
//! rustls's aws-lc-rs suites run every HKDF-Expand through aws-lc's one-shot `HKDF`, which
//! extracts the secret again and keys a fresh HMAC each time: about four SHA-2 blocks per derived
//! secret where two would do. A TLS 1.3 handshake derives some twenty, so in a profile of new
//! connections the key schedule cost more than the x25519 key exchange. These suites keep the
//! provider's AEADs and hashes and do HKDF with rustls's own `HkdfUsingHmac` over an aws-lc-rs HMAC
//! key, whose padded key state is computed once per secret and copied for each label. The bytes
//! derived are the same (RFC 5869); only the work is less.

use std::sync::LazyLock;

use aws_lc_rs::hmac as lc;
use rustls::crypto::aws_lc_rs::cipher_suite as aws;
use rustls::crypto::hmac::{Hmac, Key, Tag};
use rustls::crypto::tls13::HkdfUsingHmac;
use rustls::{CipherSuite, SupportedCipherSuite, Tls13CipherSuite};

struct HmacWith(&'static lc::Algorithm);

impl Hmac for HmacWith {
    fn with_key(&self, key: &[u8]) -> Box<dyn Key> {
        Box::new(HmacKey(lc::Key::new(*self.0, key)))
    }

    fn hash_output_len(&self) -> usize {
        self.0.digest_algorithm().output_len()
    }
}

struct HmacKey(lc::Key);

impl Key for HmacKey {
    fn sign_concat(&self, first: &[u8], middle: &[&[u8]], last: &[u8]) -> Tag {
        let mut context = lc::Context::with_key(&self.0);
        context.update(first);
        for part in middle {
            context.update(part);
        }
        context.update(last);
        Tag::new(context.sign().as_ref())
    }

    fn tag_len(&self) -> usize {
        self.0.algorithm().digest_algorithm().output_len()
    }
}

static HMAC_SHA256: HmacWith = HmacWith(&lc::HMAC_SHA256);
static HMAC_SHA384: HmacWith = HmacWith(&lc::HMAC_SHA384);
static HKDF_SHA256: HkdfUsingHmac<'static> = HkdfUsingHmac(&HMAC_SHA256);
static HKDF_SHA384: HkdfUsingHmac<'static> = HkdfUsingHmac(&HMAC_SHA384);

/// The provider's TLS 1.3 suites, in its order, each with the HKDF above.
static TLS13: LazyLock<Vec<Tls13CipherSuite>> = LazyLock::new(|| {
    [
        aws::TLS13_AES_256_GCM_SHA384,
        aws::TLS13_AES_128_GCM_SHA256,
        aws::TLS13_CHACHA20_POLY1305_SHA256,
    ]
    .iter()
    .filter_map(SupportedCipherSuite::tls13)
    .map(|suite| Tls13CipherSuite {
        common: rustls::CipherSuiteCommon {
            suite: suite.common.suite,
            hash_provider: suite.common.hash_provider,
            confidentiality_limit: suite.common.confidentiality_limit,
        },
        hkdf_provider: if suite.common.suite == CipherSuite::TLS13_AES_256_GCM_SHA384 {
            &HKDF_SHA384
        } else {
            &HKDF_SHA256
        },
        aead_alg: suite.aead_alg,
        quic: suite.quic,
    })
    .collect()
});

/// `suites` with each TLS 1.3 suite swapped for its twin above (TLS 1.2 suites unchanged).
pub fn faster(suites: &[SupportedCipherSuite]) -> Vec<SupportedCipherSuite> {
    suites
        .iter()
        .map(|suite| {
            let twin = TLS13.iter().find(|twin| twin.common.suite == suite.suite());
            match (suite, twin) {
                (SupportedCipherSuite::Tls13(_), Some(twin)) => SupportedCipherSuite::Tls13(twin),
                _ => *suite,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rustls::crypto::tls13::OkmBlock;

    use super::*;

    /// The same secrets as the provider's own HKDF, label by label, for both hashes.
    #[test]
    fn derives_what_the_provider_derives() {
        for suite in [aws::TLS13_AES_256_GCM_SHA384, aws::TLS13_AES_128_GCM_SHA256] {
            let theirs = suite.tls13().map(|s| s.hkdf_provider);
            let ours = faster(&[suite])[0].tls13().map(|s| s.hkdf_provider);
            let (Some(theirs), Some(ours)) = (theirs, ours) else {
                panic!("not a TLS 1.3 suite");
            };
            assert!(!std::ptr::addr_eq(theirs, ours), "suite was not swapped");
            for (salt, secret) in [(None, &b"shared"[..]), (Some(&b"salt"[..]), &[7u8; 48][..])] {
                let a = theirs.extract_from_secret(salt, secret);
                let b = ours.extract_from_secret(salt, secret);
                for label in [&b"tls13 c hs traffic"[..], b"tls13 derived", b""] {
                    let x: OkmBlock = a.expand_block(&[label, b"context"]);
                    let y: OkmBlock = b.expand_block(&[label, b"context"]);
                    assert_eq!(x.as_ref(), y.as_ref());
                }
            }
            let zero_a = theirs.extract_from_zero_ikm(None).expand_block(&[b"x"]);
            let zero_b = ours.extract_from_zero_ikm(None).expand_block(&[b"x"]);
            assert_eq!(zero_a.as_ref(), zero_b.as_ref());
            let key = OkmBlock::new(&[3u8; 32]);
            let mac_a = theirs.hmac_sign(&key, b"finished");
            let mac_b = ours.hmac_sign(&key, b"finished");
            assert_eq!(mac_a.as_ref(), mac_b.as_ref());
        }
    }
}
