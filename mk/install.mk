# mk/install.mk -- `make install` and `make uninstall` for pyaccel.
#
# Included by the top-level Makefile, which provides the target `lib` (building
# $(BUILD)/libpyaccel.so.$(VERSION), its soname libpyaccel.so.$(SOMAJOR), and
# $(BUILD)/libpyaccel.a) and may set PYTHON, PREFIX, VERSION, SOMAJOR, BUILD.
#
#   sudo make install [PREFIX=/usr/local] [DESTDIR=] [HUGEPAGES=N [HUGEPAGESZ=2M|1G]]
#   sudo make uninstall [same PREFIX and DESTDIR]
#
# install, each step printed, each safe to repeat:
#   $(LIBDIR)/libpyaccel.so.$(VERSION), libpyaccel.so.$(SOMAJOR), libpyaccel.so, libpyaccel.a
#   $(INCLUDEDIR)/pyaccel.h, $(PKGCONFIGDIR)/pyaccel.pc (from driver/pyaccel.pc.in)
#   $(UDEVDIR)/90-pyaccel.rules, then `udevadm control --reload` + trigger where udevadm exists
#   group $(PYACCEL_GROUP) (groupadd --system; not with DESTDIR)
#   with HUGEPAGES=N: $(SYSCTLDIR)/80-pyaccel.conf (vm.nr_hugepages, default page size only;
#     for another size, a kernel command-line hint), a live reservation raised to N if lower
#     (read back, failing on a shortfall), and hugetlbfs mounted on $(HUGEPAGES_MOUNT) for
#     the group, mode 1770 (not with DESTDIR; the mount does not survive a reboot, see the note)
#   the Python package: $(PYTHON) -m pip install $(PYSRC)
#     (with DESTDIR: --root $(DESTDIR) --no-deps --ignore-installed, for staging)
# Everything done is recorded in $(DATADIR)/pyaccel/install-manifest.txt, and
# uninstall reverses exactly that: it removes the files, links and directories
# install created, restores the hugepage count found before, unmounts, deletes
# the group only if install created it, and pip-uninstalls the package.

PA_TOP := $(patsubst %/,%,$(dir $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))))

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
DATADIR ?= $(PREFIX)/share
UDEVDIR ?= /etc/udev/rules.d
SYSCTLDIR ?= /etc/sysctl.d
PYTHON ?= python3
PIP_FLAGS ?=
PYSRC ?= $(PA_TOP)
PA_DIST ?= pyaccel
PYACCEL_GROUP ?= pyaccel
HUGEPAGES ?=
HUGEPAGESZ ?= 2M
HUGEPAGES_MOUNT ?= /dev/hugepages-pyaccel
PA_VERSION ?= $(or $(VERSION),0.1.0)
PA_SOMAJOR ?= $(or $(SOMAJOR),0)
PA_BUILD ?= $(or $(BUILD),$(PA_TOP)/driver/build)
PA_HEADER ?= $(PA_TOP)/driver/include/pyaccel.h
PA_MANIFEST = $(DATADIR)/pyaccel/install-manifest.txt
PA_HUGEPAGES_TOOL = $(PYTHON) $(PA_TOP)/scripts/setup-hugepages
PA_SYSFS = $(or $(PYACCEL_SYSFS_ROOT),/sys)
PA_HP_KB = $(if $(filter 1G,$(HUGEPAGESZ)),1048576,$(if $(filter 2M,$(HUGEPAGESZ)),2048))

# Shell prelude for every recipe line: D is DESTDIR, M the manifest (paths in it
# are the final ones, without DESTDIR).
#   pa_say WHAT PATH    one line of the report
#   pa_rec KIND PATH..  append to the manifest
#   pa_mkdir DIR        create DIR and missing parents, recording each one created
#   pa_file MODE SRC DST / pa_link TARGET DST   install unless already identical
PA_SH = set -e; D='$(DESTDIR)'; M="$$D$(PA_MANIFEST)"; \
  pa_say() { printf '  %-10s %s\n' "$$1" "$$2"; }; \
  pa_rec() { echo "$$*" >> "$$M"; }; \
  pa_mkdir() { _d="$$1"; _new=; \
    while [ "$$_d" != / ] && [ "$$_d" != . ] && [ ! -d "$$D$$_d" ]; do _new="$$_d $$_new"; _d=$$(dirname "$$_d"); done; \
    for _x in $$_new; do mkdir "$$D$$_x"; pa_say mkdir "$$_x"; done; \
    for _x in $$_new; do pa_rec dir "$$_x"; done; }; \
  pa_file() { if [ ! -f "$$2" ]; then echo "pyaccel: $$2 is missing (make lib builds it)" >&2; return 1; fi; \
    pa_mkdir "$$(dirname "$$3")"; \
    if [ -f "$$D$$3" ] && [ ! -L "$$D$$3" ] && cmp -s "$$2" "$$D$$3" && [ "$$(stat -c %a "$$D$$3")" = "$${1\#0}" ]; then \
      pa_say unchanged "$$3"; else rm -f "$$D$$3"; install -m "$$1" "$$2" "$$D$$3"; pa_say installed "$$3"; fi; \
    pa_rec file "$$3"; }; \
  pa_link() { pa_mkdir "$$(dirname "$$2")"; \
    if [ -L "$$D$$2" ] && [ "$$(readlink "$$D$$2")" = "$$1" ]; then pa_say unchanged "$$2 -> $$1"; \
    else rm -f "$$D$$2"; ln -s "$$1" "$$D$$2"; pa_say linked "$$2 -> $$1"; fi; \
    pa_rec link "$$2"; };

.PHONY: install uninstall

install: lib
	@if [ -n "$(HUGEPAGES)" ] && [ -z "$(PA_HP_KB)" ]; then \
	  echo "pyaccel: HUGEPAGESZ=$(HUGEPAGESZ): use 2M or 1G" >&2; exit 2; fi
	@if [ -n "$(HUGEPAGES)" ] && ! [ "$(HUGEPAGES)" -ge 0 ] 2>/dev/null; then \
	  echo "pyaccel: HUGEPAGES=$(HUGEPAGES): give a number of pages" >&2; exit 2; fi
	@echo "pyaccel $(PA_VERSION): installing, PREFIX=$(PREFIX)$(if $(DESTDIR), DESTDIR=$(DESTDIR))"
	@$(PA_SH) if [ -n "$$D" ]; then mkdir -p "$$D"; fi; pa_mkdir "$(DATADIR)/pyaccel"; touch "$$M"
	@# --- the C library, header and pkg-config file
	@$(PA_SH) pa_file 0755 "$(PA_BUILD)/libpyaccel.so.$(PA_VERSION)" "$(LIBDIR)/libpyaccel.so.$(PA_VERSION)"; \
	  pa_link "libpyaccel.so.$(PA_VERSION)" "$(LIBDIR)/libpyaccel.so.$(PA_SOMAJOR)"; \
	  pa_link "libpyaccel.so.$(PA_SOMAJOR)" "$(LIBDIR)/libpyaccel.so"; \
	  pa_file 0644 "$(PA_BUILD)/libpyaccel.a" "$(LIBDIR)/libpyaccel.a"; \
	  pa_file 0644 "$(PA_HEADER)" "$(INCLUDEDIR)/pyaccel.h"; \
	  tmp=$$(mktemp); trap 'rm -f "$$tmp"' EXIT; \
	  sed -e 's|@PREFIX@|$(PREFIX)|' \
	      -e 's|@LIBDIR@|$(patsubst $(PREFIX)/%,$${exec_prefix}/%,$(LIBDIR))|' \
	      -e 's|@INCLUDEDIR@|$(patsubst $(PREFIX)/%,$${prefix}/%,$(INCLUDEDIR))|' \
	      -e 's|@VERSION@|$(PA_VERSION)|' "$(PA_TOP)/driver/pyaccel.pc.in" > "$$tmp"; \
	  pa_file 0644 "$$tmp" "$(PKGCONFIGDIR)/pyaccel.pc"
	@$(PA_SH) if [ -n "$$D" ]; then pa_say skipped "ldconfig: DESTDIR is set"; \
	  elif command -v ldconfig >/dev/null 2>&1; then ldconfig; pa_say ran ldconfig; \
	  else pa_say skipped "ldconfig: not found"; fi
	@# --- the group, then the udev rules that name it
	@$(PA_SH) G='$(PYACCEL_GROUP)'; \
	  if [ -n "$$D" ]; then pa_say skipped "group $$G: DESTDIR is set (on the target: groupadd --system $$G)"; \
	  elif getent group "$$G" >/dev/null; then pa_say exists "group $$G"; \
	  elif command -v groupadd >/dev/null 2>&1; then groupadd --system "$$G"; pa_say created "group $$G"; pa_rec group "$$G"; \
	  else echo "pyaccel: groupadd not found: cannot create group $$G" >&2; exit 1; fi
	@$(PA_SH) tmp=$$(mktemp); trap 'rm -f "$$tmp"' EXIT; \
	  sed -e 's|GROUP="pyaccel"|GROUP="$(PYACCEL_GROUP)"|g' "$(PA_TOP)/udev/90-pyaccel.rules" > "$$tmp"; \
	  pa_file 0644 "$$tmp" "$(UDEVDIR)/90-pyaccel.rules"
	@$(PA_SH) if [ -n "$$D" ]; then pa_say skipped "udev reload: DESTDIR is set"; \
	  elif ! command -v udevadm >/dev/null 2>&1; then \
	    pa_say skipped "udev reload: udevadm not found; the rules are installed but nothing applies them until udev runs"; \
	  elif udevadm control --reload && udevadm trigger --subsystem-match=dax \
	       && udevadm trigger --subsystem-match=block --sysname-match='nullb*'; then \
	    pa_say reloaded "udev rules (triggered dax and nullb devices)"; \
	  else pa_say FAILED "udev reload (is systemd-udevd running?): the rules apply at the next boot"; fi
	@# --- hugepages: boot-time file, live reservation, mount
	@$(PA_SH) if [ -z "$(HUGEPAGES)" ]; then pa_say skipped "hugepages: HUGEPAGES not set"; exit 0; fi; \
	  f="$(SYSCTLDIR)/80-pyaccel.conf"; \
	  if [ -z "$$D" ]; then \
	    nr="$(PA_SYSFS)/kernel/mm/hugepages/hugepages-$(PA_HP_KB)kB/nr_hugepages"; \
	    if [ ! -f "$$nr" ]; then echo "pyaccel: this kernel has no $(HUGEPAGESZ) hugepages ($$nr)" >&2; exit 1; fi; \
	    grep -q "^hugepages $(HUGEPAGESZ) " "$$M" || pa_rec hugepages $(HUGEPAGESZ) "$$(cat "$$nr")"; \
	    $(PA_HUGEPAGES_TOOL) reserve $(HUGEPAGES) --pagesize $(HUGEPAGESZ) --min; \
	  fi; \
	  pa_mkdir "$(SYSCTLDIR)"; \
	  $(PA_HUGEPAGES_TOOL) reserve $(HUGEPAGES) --pagesize $(HUGEPAGESZ) --persist "$$D$$f" --no-live; \
	  if [ -f "$$D$$f" ]; then pa_rec file "$$f"; fi; \
	  if [ -n "$$D" ]; then pa_say skipped "live hugepage reservation and mount: DESTDIR is set"; exit 0; fi; \
	  pa_mkdir "$(HUGEPAGES_MOUNT)"; \
	  $(PA_HUGEPAGES_TOOL) --mount "$(HUGEPAGES_MOUNT)" --pagesize $(HUGEPAGESZ) --group '$(PYACCEL_GROUP)'; \
	  pa_rec mount "$(HUGEPAGES_MOUNT)"; \
	  echo "  note       the mount does not survive a reboot; for that, add to /etc/fstab:"; \
	  echo "             nodev $(HUGEPAGES_MOUNT) hugetlbfs pagesize=$(HUGEPAGESZ),gid=$(PYACCEL_GROUP),mode=1770 0 0"
	@# --- the Python package
	@$(PA_SH) if [ -z "$$D" ]; then \
	  echo "  running    $(PYTHON) -m pip install $(PIP_FLAGS) $(PYSRC)"; \
	  if ! $(PYTHON) -m pip install --no-warn-script-location $(PIP_FLAGS) "$(PYSRC)" > "$$M.pip.log" 2>&1; then \
	    cat "$$M.pip.log" >&2; rm -f "$$M.pip.log"; \
	    echo "pyaccel: pip install failed. With a distribution's Python (externally managed, PEP 668)," >&2; \
	    echo "  use a virtual environment: make install PYTHON=/path/to/venv/bin/python" >&2; exit 1; fi; \
	  rm -f "$$M.pip.log"; pa_say installed "Python package $(PA_DIST) for $(PYTHON)"; pa_rec pip $(PA_DIST); \
	else \
	  for p in $$($(PYTHON) -c 'import sysconfig; p = sysconfig.get_paths(); print(p["purelib"], p["platlib"], p["scripts"])'); do pa_mkdir "$$p"; done; \
	  echo "  running    $(PYTHON) -m pip install --root $$D --no-deps --ignore-installed $(PIP_FLAGS) $(PYSRC)"; \
	  if ! $(PYTHON) -m pip install --root "$$D" --no-deps --ignore-installed --no-warn-script-location \
	       $(PIP_FLAGS) "$(PYSRC)" > "$$M.pip.log" 2>&1; then cat "$$M.pip.log" >&2; rm -f "$$M.pip.log"; exit 1; fi; \
	  rm -f "$$M.pip.log"; \
	  rec=$$(find "$$D" -path "*/$$(echo '$(PA_DIST)' | tr - _)-*.dist-info/RECORD" | head -n 1); \
	  if [ -z "$$rec" ]; then echo "pyaccel: pip left no RECORD for $(PA_DIST) under $$D" >&2; exit 1; fi; \
	  $(PYTHON) -c 'import csv, os, sys; \
	    root, rec = sys.argv[1].rstrip("/"), sys.argv[2]; site = os.path.dirname(os.path.dirname(rec)); \
	    files = [os.path.normpath(os.path.join(site, r[0])) for r in csv.reader(open(rec)) if r]; \
	    rels = [os.path.relpath(os.path.dirname(f), site) for f in files if f.startswith(site + "/")]; \
	    dirs = {os.path.join(site, *r.split("/")[:i]) for r in rels if r != "." for i in range(1, r.count("/") + 2)}; \
	    [print("file", f[len(root):]) for f in files]; \
	    [print("dir", d[len(root):]) for d in sorted(dirs)]' "$$D" "$$rec" >> "$$M"; \
	  pa_say installed "Python package $(PA_DIST) under $$D (files listed in the manifest)"; \
	fi
	@$(PA_SH) awk '!seen[$$0]++' "$$M" > "$$M.tmp"; mv "$$M.tmp" "$$M"; pa_say manifest "$(PA_MANIFEST)"
	@echo "pyaccel: installed.$(if $(DESTDIR),, Add users to the group: usermod -aG $(PYACCEL_GROUP) USER)"

# Reverse what the manifest records, in the reverse order of install.  An entry
# that cannot be reversed is reported and kept in the manifest, so that running
# uninstall again finishes the job; uninstall then exits non-zero.
uninstall:
	@$(PA_SH) if [ ! -f "$$M" ]; then echo "pyaccel: nothing to uninstall (no $(PA_MANIFEST)$(if $(DESTDIR), under $(DESTDIR)))"; exit 0; fi; \
	  echo "pyaccel: uninstalling what $(PA_MANIFEST) records$(if $(DESTDIR), under $(DESTDIR))"; \
	  K="$$M.keep"; : > "$$K"; fail=0; udev=0; lib=0; \
	  while read -r kind path extra; do [ "$$kind" = pip ] || continue; \
	    if $(PYTHON) -m pip uninstall -y "$$path" >/dev/null 2>&1; then pa_say removed "Python package $$path"; \
	    else pa_say FAILED "pip uninstall $$path"; echo "$$kind $$path" >> "$$K"; fail=1; fi; done < "$$M"; \
	  while read -r kind path extra; do [ "$$kind" = mount ] || continue; \
	    if $(PA_HUGEPAGES_TOOL) --unmount "$$path"; then :; \
	    else pa_say FAILED "unmount $$path"; echo "$$kind $$path" >> "$$K"; fail=1; fi; done < "$$M"; \
	  while read -r kind path extra; do [ "$$kind" = hugepages ] || continue; \
	    if [ -n "$$D" ]; then continue; fi; \
	    if $(PA_HUGEPAGES_TOOL) reserve "$$extra" --pagesize "$$path"; then pa_say restored "$$path hugepages to $$extra"; \
	    else pa_say FAILED "restore $$path hugepages to $$extra"; echo "$$kind $$path $$extra" >> "$$K"; fail=1; fi; done < "$$M"; \
	  while read -r kind path extra; do case "$$kind" in file|link) ;; *) continue;; esac; \
	    case "$$path" in *.rules) udev=1;; */libpyaccel.so*) lib=1;; esac; \
	    if [ -e "$$D$$path" ] || [ -L "$$D$$path" ]; then rm -f "$$D$$path"; pa_say removed "$$path"; fi; done < "$$M"; \
	  if [ -z "$$D" ] && [ $$udev = 1 ] && command -v udevadm >/dev/null 2>&1; then \
	    udevadm control --reload && pa_say reloaded "udev rules" || pa_say FAILED "udev reload"; fi; \
	  if [ -z "$$D" ] && [ $$lib = 1 ] && command -v ldconfig >/dev/null 2>&1; then ldconfig; pa_say ran ldconfig; fi; \
	  while read -r kind path extra; do [ "$$kind" = group ] || continue; \
	    if ! getent group "$$path" >/dev/null; then pa_say gone "group $$path"; \
	    elif groupdel "$$path"; then pa_say removed "group $$path"; \
	    else pa_say FAILED "groupdel $$path"; echo "$$kind $$path" >> "$$K"; fail=1; fi; done < "$$M"; \
	  dirs=$$(mktemp); trap 'rm -f "$$dirs"' EXIT; \
	  grep '^dir ' "$$M" | cut -d' ' -f2- | awk '{ print length($$0) "\t" $$0 }' | sort -rn | cut -f2- > "$$dirs"; \
	  if [ $$fail = 0 ]; then rm -f "$$M" "$$K"; else grep '^dir ' "$$M" >> "$$K"; mv "$$K" "$$M"; fi; \
	  while read -r path; do \
	    if [ -d "$$D$$path" ] && rmdir "$$D$$path" 2>/dev/null; then pa_say removed "$$path/"; \
	    elif [ -d "$$D$$path" ]; then pa_say kept "$$path/ (not empty)"; fi; done < "$$dirs"; \
	  if [ $$fail = 0 ]; then echo "pyaccel: uninstalled."; \
	  else echo "pyaccel: some steps failed; fix them and run make uninstall again" >&2; exit 1; fi
