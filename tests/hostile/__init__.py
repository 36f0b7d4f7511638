"""Hostile repositories: crafted on disk and on real S3 servers, each refused or handled safely."""
