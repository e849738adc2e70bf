"""Operations: migrations, metrics, systemd notify, retention, the embedded server, logs."""
