"""GitHub profile analytics from the GitHub REST API: cached, rate-limit safe, with history."""
