# The Claude Agent SDK as PyPI publishes it for x86_64 Linux: nixpkgs builds its version
# from the source repository, without the Claude Code CLI that this wheel bundles and
# nanoclaw runs (claude_agent_sdk/_bundled/claude).
#
# That CLI is a Bun single-file executable: the JavaScript lives in an ELF section (.bun)
# that strip removes, and it has version definitions (DT_VERDEF) that patchelf does not
# move when it must grow the headers for a store interpreter. So its bytes stay as
# published, and _bundled/claude becomes claude-loader.sh, which starts it with glibc's
# loader from the store: no /lib64 loader (nix-ld) is needed on the system.
{
  lib,
  stdenv,
  runtimeShell,
  python,
  buildPythonPackage,
  fetchurl,
  anyio,
  jsonschema,
  mcp,
  sniffio,
}:
buildPythonPackage rec {
  pname = "claude-agent-sdk";
  version = "0.2.187";
  format = "wheel";

  src = fetchurl {
    url = "https://files.pythonhosted.org/packages/22/00/ae35893aecb9637fedab8568584ea7476f8363298a5dfc482f5759c14b2b/claude_agent_sdk-${version}-py3-none-manylinux_2_17_x86_64.whl";
    hash = "sha256-aTEyKW0f/KhXtdOT5En9E4qJvQgCTZo+UZYVukBA2cM=";
  };

  dependencies = [
    anyio
    jsonschema
    mcp
    sniffio
  ];

  # The bundled CLI's code is an ELF section that strip would drop, and patchelf must not
  # rewrite its headers either.
  dontStrip = true;
  dontPatchELF = true;

  postInstall = ''
    bundled=$out/${python.sitePackages}/claude_agent_sdk/_bundled
    mv "$bundled/claude" "$bundled/claude-unwrapped"
    substitute ${./claude-loader.sh} "$bundled/claude" \
      --subst-var-by shell ${runtimeShell} \
      --subst-var-by loader ${stdenv.cc.bintools.dynamicLinker} \
      --subst-var-by cli "$bundled/claude-unwrapped"
    chmod +x "$bundled/claude"
  '';

  pythonImportsCheck = [ "claude_agent_sdk" ];

  meta = {
    description = "Python SDK for Claude Agent, with the Claude Code CLI it bundles";
    homepage = "https://github.com/anthropics/claude-agent-sdk-python";
    # The SDK is MIT; the bundled CLI is under Anthropic's commercial terms.
    license = with lib.licenses; [
      mit
      unfree
    ];
    sourceProvenance = with lib.sourceTypes; [
      fromSource
      binaryNativeCode
    ];
    platforms = [ "x86_64-linux" ];
  };
}
