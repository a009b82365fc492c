//go:build !unix

package ui

import tea "github.com/charmbracelet/bubbletea"

func suspendOnStop(*tea.Program) (tea.Cmd, func()) { return tea.Suspend, func() {} }
