// Placeholder: replaced by the world generator.
