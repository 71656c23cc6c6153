"""PostgreSQL operations, in one place: the server binaries, the OS user they run as, a data
directory and its postmaster, tool runs (sync and async, streamed), replication rules, probes."""
