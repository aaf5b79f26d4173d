"""Load and fault drills: Locust personas, the drill runner and scenarios, objectives, reports and the chaos campaign."""
