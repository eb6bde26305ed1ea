"""Error monitoring: groups, alerts to Telegram, slow routes, job and cron monitors, a daily report."""
