"""Disaster recovery of the database half: failover and switchover through Patroni, backup and restore, verification."""
