"""Message authentication: DKIM signing of outbound mail (issue 14).

- ``keys``: DKIM private keys -- loading and checking a key file, generating
  one (``smtprs dkim keygen``), the DNS TXT record that publishes it;
- ``canon``: the relaxed body canonicalization (RFC 6376 3.4.4) and body hash,
  computed incrementally as content streams into the spool;
- ``dkim``: which mail is signed, with which key, and the signing itself
  (dkimpy builds and signs the DKIM-Signature field from the held header block
  and the streamed body hash);
- ``records``: the DNS records to publish for a domain (``smtprs
  dns-records``): MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, TLSA.

Named ``mailauth`` because ``smtpd/auth.py`` is SMTP AUTH.  This package reads
the configuration and imports no pipeline stage; the intake calls into it.
"""
