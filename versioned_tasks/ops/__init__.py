"""Operations over an app: the census, the lock file build and check, migrate-queue."""
