//! When a certificate is valid, read from its DER, to warn of one clients refuse.

use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;

/// When a certificate is valid (its `notBefore` and `notAfter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Certificates read only for their validity: a serial number longer than RFC 5280 allows is the
/// clients' business (rustls took the certificate already).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
struct Lenient;

impl x509_cert::certificate::Profile for Lenient {
    fn check_serial_number(
        _: &x509_cert::serial_number::SerialNumber<Self>,
    ) -> x509_cert::der::Result<()> {
        Ok(())
    }
}

/// A certificate expiring within this long is warned of.
const EXPIRES_SOON: Duration = Duration::from_secs(14 * 24 * 3600);

impl Validity {
    /// The validity of `cert` (DER), if it can be read as an X.509 certificate.
    pub fn of(cert: &CertificateDer<'_>) -> Option<Validity> {
        use x509_cert::certificate::CertificateInner;
        use x509_cert::der::Decode;
        let cert = CertificateInner::<Lenient>::from_der(cert.as_ref()).ok()?;
        let v = cert.tbs_certificate().validity();
        Some(Validity {
            not_before: SystemTime::UNIX_EPOCH + v.not_before.to_unix_duration(),
            not_after: SystemTime::UNIX_EPOCH + v.not_after.to_unix_duration(),
        })
    }

    /// A warning, for `tls.cert`, of a certificate that clients refuse at `now` (expired, or
    /// not valid yet) or will within 14 days.
    pub fn warning(&self, now: SystemTime) -> Option<String> {
        let date = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
        let days = |d: Duration| d.as_secs().div_ceil(24 * 3600);
        if let Ok(ago) = now.duration_since(self.not_after) {
            return Some(format!(
                "tls.cert: the certificate expired at {} ({} days ago): clients refuse it",
                date(self.not_after),
                days(ago)
            ));
        }
        if let Ok(until) = self.not_before.duration_since(now)
            && !until.is_zero()
        {
            return Some(format!(
                "tls.cert: the certificate is valid only from {}: clients refuse it until then (or this machine's clock is wrong)",
                date(self.not_before)
            ));
        }
        let left = self.not_after.duration_since(now).unwrap_or_default();
        // Whole days left, counted down (13 days and 23 hours is 13 days).
        let whole = left.as_secs() / (24 * 3600);
        (left < EXPIRES_SOON).then(|| {
            let when = match whole {
                0 => "within a day".to_owned(),
                1 => "in 1 day".to_owned(),
                n => format!("in {n} days"),
            };
            format!(
                "tls.cert: the certificate expires at {}, {when}",
                date(self.not_after)
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_warned_of_only_when_clients_refuse_it_or_will_within_14_days() {
        let day = Duration::from_secs(24 * 3600);
        let now = SystemTime::UNIX_EPOCH + 20_000 * day;
        let valid = |from: SystemTime, to: SystemTime| Validity {
            not_before: from,
            not_after: to,
        };
        assert_eq!(valid(now - day, now + 90 * day).warning(now), None);
        assert_eq!(valid(now - day, now + 15 * day).warning(now), None);
        let soon = valid(now - day, now + 10 * day).warning(now);
        assert!(soon.is_some_and(|w| w.contains("expires at") && w.contains("in 10 days")));
        let gone = valid(now - 90 * day, now - 2 * day).warning(now);
        assert!(gone.is_some_and(|w| w.contains("expired at") && w.contains("2 days ago")));
        let early = valid(now + day, now + 90 * day).warning(now);
        assert!(early.is_some_and(|w| w.contains("is valid only from")));
    }
}
