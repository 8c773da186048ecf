package postgres

// ToolEnv exposes toolEnv to the package's external tests.
func (s *Server) ToolEnv(database string) []string { return s.toolEnv(database) }
