// Typeset every formula of the built site with MathJax 3 (as the browser will) and report the
// ones MathJax rejects. Input: a JSON list of {page, tex, display} (docs/_ext/check_math.py).
// The packages are MathJax's full set minus the ones that hide errors (noundefined, noerrors)
// and textmacros, which the site's configuration does not load.
const {mathjax} = require('mathjax-full/js/mathjax.js');
const {TeX} = require('mathjax-full/js/input/tex.js');
const {SVG} = require('mathjax-full/js/output/svg.js');
const {liteAdaptor} = require('mathjax-full/js/adaptors/liteAdaptor.js');
const {RegisterHTMLHandler} = require('mathjax-full/js/handlers/html.js');
const {AllPackages} = require('mathjax-full/js/input/tex/AllPackages.js');
const fs = require('fs');

RegisterHTMLHandler(liteAdaptor());
const packages = AllPackages.filter((p) => !['noundefined', 'noerrors', 'textmacros'].includes(p));
const items = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
let bad = 0;
for (const it of items) {
  let err = null;
  const tex = new TeX({packages, formatError: (jax, e) => { err = e.message; throw e; }});
  const doc = mathjax.document('', {InputJax: tex, OutputJax: new SVG({fontCache: 'none'})});
  try {
    doc.convert(it.tex, {display: it.display});
  } catch (e) {
    err = err || e.message;
  }
  if (err) {
    bad++;
    console.log(`${it.page}: ${err}\n    ${it.tex.slice(0, 300).replace(/\n/g, ' ')}`);
  }
}
console.log(`${items.length} formulas, ${bad} rejected by MathJax`);
process.exit(bad ? 1 : 0);
