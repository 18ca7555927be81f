package main

import (
	"debug/elf"
	"os"
	"path/filepath"
	"testing"
)

// TestDistBinaries checks what make dist built (FERRY_DIST_DIR, set by make
// test-arm; skipped otherwise): one binary per edge target, each static (no
// program interpreter, no shared libraries: it runs on a bare Raspberry Pi
// OS, Alpine or BusyBox), for the right machine, with its size stated.
func TestDistBinaries(t *testing.T) {
	dir := os.Getenv("FERRY_DIST_DIR")
	if dir == "" {
		t.Skip("FERRY_DIST_DIR not set: run make test-arm (after make dist)")
	}
	for _, tc := range []struct {
		name    string
		machine elf.Machine
		class   elf.Class
	}{
		{"ferry-linux-amd64", elf.EM_X86_64, elf.ELFCLASS64},
		{"ferry-linux-arm64", elf.EM_AARCH64, elf.ELFCLASS64},
		{"ferry-linux-armv7", elf.EM_ARM, elf.ELFCLASS32},
		{"ferry-linux-armv6", elf.EM_ARM, elf.ELFCLASS32},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name)
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			f, err := elf.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if f.Machine != tc.machine || f.Class != tc.class {
				t.Fatalf("machine %v class %v, want %v %v", f.Machine, f.Class, tc.machine, tc.class)
			}
			for _, p := range f.Progs {
				if p.Type == elf.PT_INTERP {
					t.Fatal("has a program interpreter: dynamically linked")
				}
			}
			if libs, err := f.ImportedLibraries(); err == nil && len(libs) > 0 {
				t.Fatalf("needs shared libraries %v", libs)
			}
			t.Logf("%s: static, %.1f MiB", tc.name, float64(fi.Size())/(1<<20))
		})
	}
}
