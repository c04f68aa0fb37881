"""Code shared by every ucim component: resource models, settings, logging, metrics."""
