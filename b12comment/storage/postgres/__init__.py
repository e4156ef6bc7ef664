"""The PostgreSQL journal (a `postgresql://` URL; the extra `b12comment[postgres]`),
and the lease that lets one of several instances lead."""
