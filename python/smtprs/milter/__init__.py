"""The milter client (issue 18): content filters speaking the Sendmail/Postfix
milter protocol, version 6 -- rspamd, OpenDKIM, spamass-milter.

``protocol`` is the packet codec (no I/O), ``client`` one Trio connection to
one milter, ``driver`` what a session asks of its milters at MAIL, RCPT and
the end of the data, and the changes they make.  See docs/milter.md.
"""
